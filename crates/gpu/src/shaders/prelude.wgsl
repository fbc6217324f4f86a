// Prepended to every shader file of qinfer-gpu.

// The linear index of this workgroup in a grid of `[x, y, 1]` workgroups (context.rs `grid`).
fn wg_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

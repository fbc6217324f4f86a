// Element-wise ops. Every op writes a new buffer `out` (activations may be shared).
// One thread per element, 256 per workgroup, `wg_index` grid.

struct Params {
    // Elements.
    n: u32,
    // Row width (add_bias: the bias length; add_gated: the row width).
    width: u32,
    // scale: the factor.
    s: f32,
    // gelu: 0 = erf, 1 = tanh.
    form: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> c: array<f32>;

fn elem(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return wg_index(wid, nwg) * 256u + lid;
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i < p.n { out[i] = a[i] * p.s; }
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i < p.n { out[i] = a[i] + b[i]; }
}

@compute @workgroup_size(256)
fn sigmoid_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i < p.n { out[i] = a[i] * sigmoid(b[i]); }
}

@compute @workgroup_size(256)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i < p.n { out[i] = silu(a[i]) * b[i]; }
}

@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i < p.n { out[i] = a[i] + b[i % p.width]; }
}

// out[t, j] = a[t, j] + sigmoid(c[t]) · b[t, j]
@compute @workgroup_size(256)
fn add_gated(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i < p.n { out[i] = a[i] + sigmoid(c[i / p.width]) * b[i]; }
}

// erf to within 1.2e-7 (W. J. Cody's rational approximations are not needed at f32: this is
// the Numerical Recipes erfc Chebyshev fit, fractional error < 1.2e-7 everywhere).
fn erf_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, x >= 0.0);
}

@compute @workgroup_size(256)
fn gelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i >= p.n { return; }
    let x = a[i];
    if p.form == 0u {
        out[i] = 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
    } else {
        let u = 0.79788456080286536 * (x + 0.044715 * x * x * x);
        out[i] = 0.5 * x * (1.0 + tanh(clamp(u, -15.0, 15.0)));
    }
}

// scatter_add: out[rows[i]] += weights[i] · a[i] for i in order. One thread per column, so a
// row named twice adds in order. `b` holds the rows (as u32 bits) then the weights.
@compute @workgroup_size(256)
fn scatter_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let col = elem(wid, nwg, lid);
    if col >= p.width { return; }
    for (var i = 0u; i < p.n; i++) {
        let row = bitcast<u32>(b[i]);
        let w = b[p.n + i];
        let o = row * p.width + col;
        out[o] = out[o] + w * a[i * p.width + col];
    }
}

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i < p.n { out[i] = p.s; }
}

// The bandwidth probe: every thread sums `p.width` vec4s of `a` strided by the grid (coalesced)
// and writes one value, so the read is the whole buffer and the write next to nothing.
@compute @workgroup_size(256)
fn read_probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    let stride = p.n;
    var acc = 0.0;
    for (var k = 0u; k < p.width; k++) {
        let j = 4u * (i + k * stride);
        acc += a[j] + a[j + 1u] + a[j + 2u] + a[j + 3u];
    }
    out[i] = acc;
}

// Gated DeltaNet: the causal conv with SiLU and its kept windows, the gates, the delta rule.
//
// Bindings by entry point (one declaration per binding number for the whole file):
//   conv_silu   out = [T, C]    a = x [T, C]   b = window [K-1, C]   c = taps [K, C]
//   conv_keep   out = kept rows of this block  a = x                 b = window
//   gates       out = β [T, Nv] a = b-proj     b = a-proj   c = a_neg   d = dt_bias
//               out2 = g [T, Nv]
//   delta_rule* out = o [T, Nv·Dv]  a = q  b = k [T, Nk·Dk]  c = v [T, Nv·Dv]  d = g
//               out2 = state [Nv, Dk, Dv] (read and written in place)  e = β [T, Nv]

struct Params {
    // conv, gates: elements this dispatch covers.
    n: u32,
    // Positions.
    t: u32,
    // conv: channels C; gates: value heads Nv.
    c: u32,
    // conv: taps K.
    kern: u32,
    // conv_keep: the first kept row this dispatch writes (its binding starts there).
    row0: u32,
    // delta rule: heads and head dims.
    nk: u32,
    nv: u32,
    dk: u32,
    dv: u32,
    // delta rule: which key head a value head reads: 0 = grouped (j / (Nv/Nk)), 1 = tiled
    // (j mod Nk).
    order: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> c: array<f32>;
@group(0) @binding(5) var<storage, read> d: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;
@group(0) @binding(7) var<storage, read> e: array<f32>;

fn elem(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return wg_index(wid, nwg) * 256u + lid;
}

// --- Conv ---

// out[t, ch] = silu(Σ_j taps[j, ch] · (window ‖ x)[t + j, ch]), one thread per output element.
// The sum runs over the taps in order from 0 as the CPU's does.
@compute @workgroup_size(256)
fn conv_silu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i >= p.n { return; }
    let hist = p.kern - 1u;
    let ti = i / p.c;
    let ch = i - ti * p.c;
    var acc = 0.0;
    for (var j = 0u; j < p.kern; j++) {
        let r = ti + j;
        var xv: f32;
        if r < hist {
            xv = b[r * p.c + ch];
        } else {
            xv = a[(r - hist) * p.c + ch];
        }
        acc = acc + c[j * p.c + ch] * xv;
    }
    out[i] = silu(acc);
}

// Kept windows: kept row `ti` is rows `ti + 1 .. ti + K` of `window ‖ x`, which in the flat
// `[K-1 + T, C]` view is one contiguous run of (K-1)·C values. `out` is bound from row `row0`.
@compute @workgroup_size(256)
fn conv_keep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i >= p.n { return; }
    let w = (p.kern - 1u) * p.c;
    let row = i / w;
    let at = (p.row0 + row + 1u) * p.c + (i - row * w);
    if at < w {
        out[i] = b[at];
    } else {
        out[i] = a[at - w];
    }
}

// --- Gates ---

// ln(1 + y) for y in [0, 1], to a few ulp relative, without the builtin `log`: Vulkan lets
// `log` be off by 2⁻²¹ absolute near 1 (lavapipe is), which is all of ln(1 + y) for small y.
// ln(1 + y) = 2 atanh(s), s = y / (2 + y) ≤ 1/3: the odd series in s to s¹⁷ (the first term
// left out is below 2⁻²⁶ of the sum).
fn log1p_unit(y: f32) -> f32 {
    let s = y / (2.0 + y);
    let z = s * s;
    let r = 1.0 + z * (1.0 / 3.0 + z * (1.0 / 5.0 + z * (1.0 / 7.0 + z * (1.0 / 9.0
        + z * (1.0 / 11.0 + z * (1.0 / 13.0 + z * (1.0 / 15.0 + z * (1.0 / 17.0))))))));
    return 2.0 * s * r;
}

// ln(1 + eˣ), the identity above 20 (PyTorch's threshold, as the CPU's), else
// max(x, 0) + ln(1 + e^−|x|): the logarithm only ever of 1 + y, y ≤ 1.
fn softplus(x: f32) -> f32 {
    if x > 20.0 { return x; }
    return max(x, 0.0) + log1p_unit(exp(-abs(x)));
}

@compute @workgroup_size(256)
fn gates(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = elem(wid, nwg, lid);
    if i >= p.n { return; }
    let h = i % p.c;
    out[i] = sigmoid(a[i]);
    out2[i] = c[h] * softplus(b[i] + d[h]);
}

// --- Delta rule ---
//
// Per value head h (key head kh) and position t, with state S [Dk, Dv], decay α = e^g:
//   u = Sᵀk;  δ = β (v − α u);  S ← α S + k ⊗ δ;  o = Sᵀq
// — the CPU's fused step (crates/cpu kernels/delta.rs), with the same fused multiply-adds in
// the same order: u_j = fma(k_i, S_ij, u_j) over i ascending, δ_j = β · fma(−α, u_j, v_j),
// S_ij = fma(k_i, δ_j, α S_ij), o_j = fma(q_i, S_ij, o_j) over i ascending.
//
// Column j of a head's state depends only on itself, k, q, v_j, α and β, so one thread owns
// one column (h, j) for all positions: no reduction across threads. A workgroup is one head's
// block of DV_BLOCK columns; it stages each position's k and q in workgroup memory. Every
// position is computed the same way whatever the call's length, so T positions in one call
// are bit for bit T one-position calls.

const DV_BLOCK: u32 = 128u;
// Largest Dk whose state column a thread keeps in its own (private) memory.
const DK_LOCAL: u32 = 128u;

var<workgroup> kw: array<f32, DK_LOCAL>;
var<workgroup> qw: array<f32, DK_LOCAL>;

fn k_head(h: u32) -> u32 {
    if p.order == 0u { return h / (p.nv / p.nk); }
    return h % p.nk;
}

// The column of workgroup `wi`'s head and thread `lid`, for Dk = `dk` ≤ DK_LOCAL: the column
// is read once into private memory, carried over every position, written back once.
fn delta_local(wi: u32, lid: u32, dk: u32) {
    let blocks = (p.dv + DV_BLOCK - 1u) / DV_BLOCK;
    let h = wi / blocks;
    let j = (wi - h * blocks) * DV_BLOCK + lid;
    let live = j < p.dv;
    let kh = k_head(h);
    let base = h * dk * p.dv + j;
    var s: array<f32, DK_LOCAL>;
    if live {
        for (var i = 0u; i < dk; i++) { s[i] = out2[base + i * p.dv]; }
    }
    for (var ti = 0u; ti < p.t; ti++) {
        // The previous position's k and q are read by every thread before they are replaced.
        workgroupBarrier();
        if lid < dk {
            let at = (ti * p.nk + kh) * dk + lid;
            kw[lid] = b[at];
            qw[lid] = a[at];
        }
        workgroupBarrier();
        let gi = ti * p.nv + h;
        let alpha = exp(d[gi]);
        let beta = e[gi];
        if live {
            var u = 0.0;
            for (var i = 0u; i < dk; i++) { u = fma(kw[i], s[i], u); }
            let vo = gi * p.dv + j;
            let delta = beta * fma(-alpha, u, c[vo]);
            var o = 0.0;
            for (var i = 0u; i < dk; i++) {
                let sn = fma(kw[i], delta, alpha * s[i]);
                s[i] = sn;
                o = fma(qw[i], sn, o);
            }
            out[vo] = o;
        }
    }
    if live {
        for (var i = 0u; i < dk; i++) { out2[base + i * p.dv] = s[i]; }
    }
}

// Any Dk ≤ DK_LOCAL.
@compute @workgroup_size(128)
fn delta_rule(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let wi = wg_index(wid, nwg);
    if wi >= p.nv * ((p.dv + DV_BLOCK - 1u) / DV_BLOCK) { return; }
    delta_local(wi, lid, p.dk);
}

// Dk = 128 (every Qwen3.5/3.6 model) as a constant, so a compiler can unroll the loops over
// Dk and keep the column in registers. The same operations as `delta_rule`.
@compute @workgroup_size(128)
fn delta_rule_128(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let wi = wg_index(wid, nwg);
    if wi >= p.nv * ((p.dv + DV_BLOCK - 1u) / DV_BLOCK) { return; }
    delta_local(wi, lid, 128u);
}

// Dk > DK_LOCAL: the same operations on the state in place in its buffer, k and q read from
// theirs.
@compute @workgroup_size(128)
fn delta_rule_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let blocks = (p.dv + DV_BLOCK - 1u) / DV_BLOCK;
    let wi = wg_index(wid, nwg);
    if wi >= p.nv * blocks { return; }
    let h = wi / blocks;
    let j = (wi - h * blocks) * DV_BLOCK + lid;
    if j >= p.dv { return; }
    let dk = p.dk;
    let kh = k_head(h);
    let base = h * dk * p.dv + j;
    for (var ti = 0u; ti < p.t; ti++) {
        let at = (ti * p.nk + kh) * dk;
        let gi = ti * p.nv + h;
        let alpha = exp(d[gi]);
        let beta = e[gi];
        var u = 0.0;
        for (var i = 0u; i < dk; i++) { u = fma(b[at + i], out2[base + i * p.dv], u); }
        let vo = gi * p.dv + j;
        let delta = beta * fma(-alpha, u, c[vo]);
        var o = 0.0;
        for (var i = 0u; i < dk; i++) {
            let sn = fma(b[at + i], delta, alpha * out2[base + i * p.dv]);
            out2[base + i * p.dv] = sn;
            o = fma(a[at + i], sn, o);
        }
        out[vo] = o;
    }
}

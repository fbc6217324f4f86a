// Attention over KV pages (attention.rs) and the KV page writes (kv.rs).
//
// KV rows live in pages of 64 rows (one cache block) cut from large "slab" buffers, in the
// cache's stored encoding (`kind`): 0 f32, 1 BF16, 2 F16 (u16 little-endian, two per word),
// 3 Q8_0 (GGML's 34-byte blocks, row after row, read byte-wise). A page table gives, for
// every page of the sequence, the slab slot (binding 5..8) and first word of its key page and
// of its value page. `attend_all` runs the same kernel with the activations `k`, `v` (f32) as
// the "slabs" and no mask.
//
// One workgroup of 64 threads takes a tile of TV query vectors — consecutive (row, query
// head) pairs of one kv head — and walks keys in chunks of 512 positions (8 pages) aligned
// to position 0. Per chunk an online softmax starts afresh (per page: scores of the visible
// keys, running max m, α = e^(m_old − m), p = e^(s − m), l ← l·α + Σp, o ← o·α + Σ p·v);
// the chunks' (m, l, o) are merged in chunk order (`merge`). For few query rows each chunk
// is its own workgroup (`split`) writing its partial, and `attend_merge` merges them in
// order; otherwise a workgroup walks its chunks itself. Both run the same `chunk`, `merge`
// and `finish` code on the same values in the same order, so a query row's output has the
// same bits whatever the mode, the tile it lands in, or the split of the sequence into steps:
// every vector's dot products (over `d` in order), its maxima and sums (over keys in order),
// its accumulators (over keys in order) and its merges depend on absolute positions only.

struct Params {
    // Query rows (attention) or rows written (kv_store).
    rows: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    // hq / hkv.
    group: u32,
    scale: f32,
    // Keys in all (the sequence's length after this step's rows).
    keys: u32,
    // 1: row i sees keys 0..=keys - rows + i. 0: every key.
    causal: u32,
    // KV encoding (see above).
    kind: u32,
    // Values per KV row (Hkv·D) and bytes per stored row.
    width: u32,
    row_bytes: u32,
    // Vector tiles per kv head.
    tiles: u32,
    // This dispatch's chunks.
    c_lo: u32,
    c_hi: u32,
    // 1: one chunk per workgroup, partials to `state`.
    split: u32,
    // In order, over several dispatches: the running state is loaded from / stored to `state`.
    carry_in: u32,
    carry_out: u32,
    // Chunks of the whole call (the partials' stride).
    chunks: u32,
    // kv_store: first source row, the page's first word in its slab, its first row written,
    // the phase (0: Q8_0 scales, 1: words).
    src_row: u32,
    dst_word: u32,
    dst_row: u32,
    phase: u32,
    // kv_copy: source word, words.
    src_word: u32,
    words: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Attention output (f32 bits); kv_store / kv_copy: the slab written.
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
// Carried state or chunk partials: per vector [m, l, o_0 .. o_{d-1}] (f32 bits); kv_store:
// the Q8_0 blocks' (f16 scale, 1/d) pairs.
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
// Queries (f32 bits); kv_store: the rows to store (f32 bits).
@group(0) @binding(3) var<storage, read> src: array<u32>;
// Per page: key slot, key word, value slot, value word.
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read> slab0: array<u32>;
@group(0) @binding(6) var<storage, read> slab1: array<u32>;
@group(0) @binding(7) var<storage, read> slab2: array<u32>;
@group(0) @binding(8) var<storage, read> slab3: array<u32>;

// Query vectors per workgroup.
const TV: u32 = 8u;
// Keys per page (BLOCK_TOKENS) and pages per chunk (512 keys).
const PAGE: u32 = 64u;
const CHUNK_PAGES: u32 = 8u;
// Head dims per staged slice of a key page, and its padded row stride in `ks`.
const DS: u32 = 16u;
const KS: u32 = 17u;
// Largest head dim; output columns per thread (MAXD / 64).
const MAXD: u32 = 256u;
const NC: u32 = 4u;
const F32_INF: u32 = 0x7F800000u;

// ---------------------------------------------------------------------------------------
// Exact conversions (integer arithmetic only: no dependence on the device's rounding of
// division, its flushing of subnormals or its f16 packing). Bit for bit `half`'s
// `f16::from_f32` / `bf16::from_f32` and `qinfer_quant::q8_0::quantize_block_ref`.

// |x| = (mant + a fraction, `sticky` if non-zero) · 2^e with mant < 2^31, rounded to nearest
// even in a binary format of `frac` fraction bits whose smallest step is 2^emin
// (subnormals included) and whose infinity is `inf`; the magnitude bits.
fn round_pack(mant: u32, e: i32, sticky: bool, frac: u32, emin: i32, inf: u32) -> u32 {
    if mant == 0u {
        return 0u;
    }
    let top = i32(firstLeadingBit(mant));
    let lsb = max(top + e - i32(frac), emin);
    let shift = lsb - e;
    var m = 0u;
    if shift <= 0 {
        m = mant << u32(-shift);
    } else if shift < 32 {
        let s = u32(shift);
        m = mant >> s;
        let rem = mant & ((1u << s) - 1u);
        let half = 1u << (s - 1u);
        if rem > half || (rem == half && (sticky || (m & 1u) == 1u)) {
            m += 1u;
        }
    }
    // (shift ≥ 32: under half the smallest step, zero.)
    let ex = lsb - emin;
    if ex > i32(inf >> frac) {
        return inf;
    }
    return min((u32(ex) << frac) + m, inf);
}

struct Fp {
    m: u32,
    e: i32,
}

// A finite non-zero f32 magnitude as m · 2^e with m's top bit at bit 23.
fn unpack(a: u32) -> Fp {
    let ex = (a >> 23u) & 0xFFu;
    let f = a & 0x7FFFFFu;
    if ex == 0u {
        let s = 23u - firstLeadingBit(f);
        return Fp(f << s, -149 - i32(s));
    }
    return Fp(f | 0x800000u, i32(ex) - 150);
}

// a / b for non-negative f32 bits a (finite or infinite) and b (non-zero; a / ∞ is taken as
// 0, ∞ / ∞ included: never asked), rounded to nearest even: a restoring division of the
// significands.
fn soft_div(a: u32, b: u32) -> u32 {
    if a == 0u || b >= F32_INF {
        return 0u;
    }
    if a >= F32_INF {
        return F32_INF;
    }
    let x = unpack(a);
    let y = unpack(b);
    var r = x.m;
    var q = 0u;
    for (var i = 0u; i < 27u; i++) {
        q <<= 1u;
        if r >= y.m {
            r -= y.m;
            q |= 1u;
        }
        r <<= 1u;
    }
    // q = ⌊x.m · 2^26 / y.m⌋ in [2^25, 2^27).
    return round_pack(q, x.e - y.e - 26, r != 0u, 23u, -149, F32_INF);
}

// a · b for f32 bits, rounded to nearest even (NaN as 0x7FC00000).
fn soft_mul(a: u32, b: u32) -> u32 {
    let sign = (a ^ b) & 0x80000000u;
    let x = a & 0x7FFFFFFFu;
    let y = b & 0x7FFFFFFFu;
    if x > F32_INF || y > F32_INF || ((x == F32_INF || y == F32_INF) && (x == 0u || y == 0u)) {
        return 0x7FC00000u;
    }
    if x == F32_INF || y == F32_INF {
        return sign | F32_INF;
    }
    if x == 0u || y == 0u {
        return sign;
    }
    let u = unpack(x);
    let v = unpack(y);
    // The 48-bit product in 16-bit limbs: hi · 2^32 + lo.
    let a0 = u.m & 0xFFFFu;
    let a1 = u.m >> 16u;
    let b0 = v.m & 0xFFFFu;
    let b1 = v.m >> 16u;
    let l0 = a0 * b0;
    let mid = a1 * b0 + a0 * b1;
    let lo = l0 + (mid << 16u);
    let hi = a1 * b1 + (mid >> 16u) + select(0u, 1u, lo < l0);
    var len = 1u + firstLeadingBit(lo);
    if hi != 0u {
        len = 33u + firstLeadingBit(hi);
    }
    var mant = lo;
    var e = u.e + v.e;
    var sticky = false;
    if len > 30u {
        let s = len - 30u;
        mant = (lo >> s) | (hi << (32u - s));
        sticky = (lo << (32u - s)) != 0u;
        e += i32(s);
    }
    return sign | round_pack(mant, e, sticky, 23u, -149, F32_INF);
}

// Rust's `x.round() as i32 as i8` (halves away from zero, saturating, NaN → 0) of f32 bits
// `x`, as the byte stored.
fn round_to_i8(x: u32) -> u32 {
    let a = x & 0x7FFFFFFFu;
    if a > F32_INF {
        return 0u;
    }
    let neg = (x >> 31u) == 1u;
    let ex = a >> 23u;
    let m = (a & 0x7FFFFFu) | 0x800000u;
    var i = 0u;
    if ex >= 158u {
        i = select(0x7FFFFFFFu, 0x80000000u, neg);
    } else {
        var mag = 0u;
        if ex >= 150u {
            mag = m << (ex - 150u);
        } else if ex >= 126u {
            let s = 150u - ex;
            mag = (m + (1u << (s - 1u))) >> s;
        }
        i = select(mag, 0u - mag, neg);
    }
    return i & 0xFFu;
}

// `half::f16::from_f32` (nearest even; NaN keeps its top payload bits, quiet bit set).
fn f32_to_f16(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7FFFFFFFu;
    if a >= F32_INF {
        let man = a & 0x7FFFFFu;
        return sign | 0x7C00u | select(0u, 0x200u, man != 0u) | (man >> 13u);
    }
    let ex = a >> 23u;
    var m = a & 0x7FFFFFu;
    var e = -149;
    if ex != 0u {
        m |= 0x800000u;
        e = i32(ex) - 150;
    }
    return sign | round_pack(m, e, false, 10u, -24, 0x7C00u);
}

// `half::bf16::from_f32` (nearest even; NaN: quiet bit set).
fn f32_to_bf16(x: u32) -> u32 {
    if (x & 0x7FFFFFFFu) > F32_INF {
        return (x >> 16u) | 0x40u;
    }
    if (x & 0x8000u) != 0u && (x & 0x17FFFu) != 0u {
        return (x >> 16u) + 1u;
    }
    return x >> 16u;
}

// An f16 as f32, exactly (subnormals included).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let ex = (h >> 10u) & 0x1Fu;
    let m = h & 0x3FFu;
    if ex == 0x1Fu {
        return bitcast<f32>(sign | F32_INF | (m << 13u));
    }
    if ex == 0u {
        if m == 0u {
            return bitcast<f32>(sign);
        }
        // m · 2^-24 with m's top bit at t: exponent t − 24, fraction the bits below t.
        let t = firstLeadingBit(m);
        return bitcast<f32>(sign | ((t + 103u) << 23u) | (((m << (10u - t)) & 0x3FFu) << 13u));
    }
    return bitcast<f32>(sign | ((ex + 112u) << 23u) | (m << 13u));
}

// ---------------------------------------------------------------------------------------
// KV writes.

// Stores `rows` rows of `src` (f32, `width` wide, from row `src_row`) as rows `dst_row..` of
// the page at word `dst_word` of the slab `dst`, in encoding `kind`. Phase 0 (Q8_0 only):
// one thread per 32-value block computes `d = amax / 127` (its f16 bits) and `1/d` into
// `state`. Phase 1: one thread per destination word, so no two threads write one word (a
// 34-byte Q8_0 block or an odd-width 16-bit row shares words with its neighbours); bytes of
// a word outside the rows written (an earlier row, or past the last) are kept.
@compute @workgroup_size(256)
fn kv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    let nb = p.width / 32u;
    if p.phase == 0u {
        if i >= p.rows * nb {
            return;
        }
        let base = (p.src_row + i / nb) * p.width + (i % nb) * 32u;
        // max |x| over the block, NaN skipped (as `f32::max` does).
        var amax = 0u;
        for (var j = 0u; j < 32u; j++) {
            let a = src[base + j] & 0x7FFFFFFFu;
            if a <= F32_INF {
                amax = max(amax, a);
            }
        }
        let d = soft_div(amax, 0x42FE0000u); // amax / 127
        var id = 0u;
        if d != 0u {
            id = soft_div(0x3F800000u, d);
        }
        state[2u * i] = f32_to_f16(d);
        state[2u * i + 1u] = id;
        return;
    }
    let start = p.dst_row * p.row_bytes;
    let end = start + p.rows * p.row_bytes;
    let w0 = start / 4u;
    if i >= (end + 3u) / 4u - w0 {
        return;
    }
    let wd = w0 + i;
    let at = p.dst_word + wd;
    if p.kind == 0u {
        dst[at] = src[p.src_row * p.width + i];
        return;
    }
    var word = 0u;
    if wd * 4u < start || wd * 4u + 4u > end {
        word = dst[at];
    }
    if p.kind == 1u || p.kind == 2u {
        for (var h = 0u; h < 2u; h++) {
            let byte = wd * 4u + 2u * h;
            if byte >= start && byte < end {
                let x = src[p.src_row * p.width + (byte - start) / 2u];
                var code = f32_to_f16(x);
                if p.kind == 1u {
                    code = f32_to_bf16(x);
                }
                word = (word & ~(0xFFFFu << (16u * h))) | (code << (16u * h));
            }
        }
    } else {
        for (var b = 0u; b < 4u; b++) {
            let byte = wd * 4u + b;
            if byte >= start && byte < end {
                let rel = byte - start;
                let row = rel / p.row_bytes;
                let pos = rel % p.row_bytes;
                let blk = pos / 34u;
                let bp = pos % 34u;
                let bi = row * nb + blk;
                var v = 0u;
                if bp < 2u {
                    v = (state[2u * bi] >> (8u * bp)) & 0xFFu;
                } else {
                    let x = src[(p.src_row + row) * p.width + blk * 32u + bp - 2u];
                    v = round_to_i8(soft_mul(x, state[2u * bi + 1u]));
                }
                word = (word & ~(0xFFu << (8u * b))) | (v << (8u * b));
            }
        }
    }
    dst[at] = word;
}

// Copies `words` words from word `src_word` to word `dst_word` of one slab (a page duplicated
// within its slab: a buffer cannot be copied onto itself by a transfer).
@compute @workgroup_size(256)
fn kv_copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if i < p.words {
        dst[p.dst_word + i] = dst[p.src_word + i];
    }
}

// The conversions above on pairs (a, b) of `src` (tests, against the host's arithmetic):
// per pair `a / b`, `a · b`, and `round_to_i8(a) | f32_to_f16(a) << 8`.
@compute @workgroup_size(256)
fn soft_float_probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if i >= p.rows {
        return;
    }
    let a = src[2u * i];
    let b = src[2u * i + 1u];
    var q = 0u;
    let bm = b & 0x7FFFFFFFu;
    if bm != 0u && bm <= F32_INF && (a & 0x7FFFFFFFu) <= F32_INF {
        q = soft_div(a & 0x7FFFFFFFu, b & 0x7FFFFFFFu);
    }
    dst[3u * i] = q;
    dst[3u * i + 1u] = soft_mul(a, b);
    dst[3u * i + 2u] = round_to_i8(a) | (f32_to_f16(a) << 8u);
    state[i] = 0u;
}

// ---------------------------------------------------------------------------------------
// Attention.

// Query vectors of the tile, [TV][MAXD].
var<workgroup> qs: array<f32, 2048>;
// A slice of a key page: [PAGE][KS].
var<workgroup> ks: array<f32, 1088>;
// Scores, then probabilities: [TV][PAGE].
var<workgroup> ps: array<f32, 512>;
// Per vector: keys of the page it sees and its α (page update); merge kind and factors.
var<workgroup> w_seen: array<u32, 8>;
var<workgroup> w_alpha: array<f32, 8>;
var<workgroup> w_how: array<u32, 8>;
var<workgroup> w_fa: array<f32, 8>;
var<workgroup> w_fb: array<f32, 8>;

// This thread's output columns lid + 64·i of every vector: the running total and the chunk
// in progress, [TV][NC]. m and l (threads lid < TV, for vector lid).
var<private> o_tot: array<f32, 32>;
var<private> o_part: array<f32, 32>;
var<private> m_tot: f32;
var<private> l_tot: f32;
var<private> m_part: f32;
var<private> l_part: f32;

fn slab(slot: u32, i: u32) -> u32 {
    switch slot {
        case 0u: { return slab0[i]; }
        case 1u: { return slab1[i]; }
        case 2u: { return slab2[i]; }
        default: { return slab3[i]; }
    }
}

// Value `c` of row `j` of the page at word `base` of slab `slot`, decoded.
fn kv_value(slot: u32, base: u32, j: u32, c: u32) -> f32 {
    switch p.kind {
        case 0u: {
            return bitcast<f32>(slab(slot, base + j * p.width + c));
        }
        case 1u, 2u: {
            let h = j * p.width + c;
            let bits = (slab(slot, base + h / 2u) >> ((h % 2u) * 16u)) & 0xFFFFu;
            if p.kind == 1u {
                return bitcast<f32>(bits << 16u);
            }
            return f16_to_f32(bits);
        }
        default: {
            // The scale sits at an even byte: within one word.
            let at = j * p.row_bytes + (c / 32u) * 34u;
            let d = f16_to_f32((slab(slot, base + at / 4u) >> ((at % 4u) * 8u)) & 0xFFFFu);
            let qb = at + 2u + c % 32u;
            let q = (slab(slot, base + qb / 4u) >> ((qb % 4u) * 8u)) & 0xFFu;
            return d * f32(i32(q << 24u) >> 24u);
        }
    }
}

struct Tile {
    kvh: u32,
    // First vector (index row·group + head-in-group) and vectors.
    v0: u32,
    nv: u32,
    // Keys the tile's last row sees, and the chunks they span.
    span: u32,
    chunks: u32,
}

// Keys visible to query row `row`: 0..visible(row).
fn visible(row: u32) -> u32 {
    if p.causal == 1u {
        return p.keys - p.rows + row + 1u;
    }
    return p.keys;
}

// Workgroup group `g`: latest tiles first (they see the most keys).
fn tile_of(g: u32) -> Tile {
    let t = p.tiles - 1u - g / p.hkv;
    let v0 = t * TV;
    let nv = min(TV, p.rows * p.group - v0);
    let span = visible((v0 + nv - 1u) / p.group);
    return Tile(g % p.hkv, v0, nv, span, (span + PAGE * CHUNK_PAGES - 1u) / (PAGE * CHUNK_PAGES));
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xFF800000u);
}

fn load_queries(tl: Tile, lid: u32) {
    for (var i = lid; i < TV * MAXD; i += 64u) {
        let v = i / MAXD;
        let c = i % MAXD;
        var x = 0.0;
        if v < tl.nv && c < p.d {
            let vi = tl.v0 + v;
            let head = tl.kvh * p.group + vi % p.group;
            x = bitcast<f32>(src[((vi / p.group) * p.hq + head) * p.d + c]);
        }
        qs[i] = x;
    }
}

// One page of keys into the chunk in progress.
fn page(tl: Tile, pg: u32, lid: u32) {
    let key0 = pg * PAGE;
    let nk = min(PAGE, p.keys - key0);
    let ks_slot = table[4u * pg];
    let k_base = table[4u * pg + 1u];
    let v_slot = table[4u * pg + 2u];
    let v_base = table[4u * pg + 3u];
    let col0 = tl.kvh * p.d;
    // Scores: thread j takes key j, for every vector; dims in order, in slices of DS.
    var acc: array<f32, 8>;
    for (var ds = 0u; ds < p.d; ds += DS) {
        workgroupBarrier();
        for (var i = lid; i < PAGE * DS; i += 64u) {
            let j = i / DS;
            let c = ds + i % DS;
            if j < nk && c < p.d {
                ks[j * KS + i % DS] = kv_value(ks_slot, k_base, j, col0 + c);
            }
        }
        workgroupBarrier();
        if lid < nk {
            // The slice's 16 products summed on their own, then added: a dot product of 256
            // rounds like one of 32 (sums of order 10 stay within an ulp or two of f64's).
            let n = min(DS, p.d - ds);
            var part: array<f32, 8>;
            for (var c = 0u; c < n; c++) {
                let kd = ks[lid * KS + c];
                for (var v = 0u; v < TV; v++) {
                    part[v] += qs[v * MAXD + ds + c] * kd;
                }
            }
            for (var v = 0u; v < TV; v++) {
                acc[v] += part[v];
            }
        }
    }
    for (var v = 0u; v < TV; v++) {
        ps[v * PAGE + lid] = acc[v] * p.scale;
    }
    workgroupBarrier();
    // Softmax update: thread v < TV for vector v, over the keys it sees in order.
    if lid < TV {
        var seen = 0u;
        if lid < tl.nv {
            let vis = visible((tl.v0 + lid) / p.group);
            seen = min(vis - min(vis, key0), nk);
        }
        w_seen[lid] = seen;
        if seen > 0u {
            var mx = m_part;
            for (var j = 0u; j < seen; j++) {
                mx = max(mx, ps[lid * PAGE + j]);
            }
            var a = 0.0;
            if l_part != 0.0 {
                a = exp(m_part - mx);
            }
            var sum = 0.0;
            for (var j = 0u; j < seen; j++) {
                let e = exp(ps[lid * PAGE + j] - mx);
                ps[lid * PAGE + j] = e;
                sum += e;
            }
            l_part = l_part * a + sum;
            m_part = mx;
            w_alpha[lid] = a;
        }
    }
    workgroupBarrier();
    // o ← o·α + Σ p·v: thread columns lid + 64·i, keys in order.
    for (var v = 0u; v < TV; v++) {
        if w_seen[v] > 0u {
            for (var i = 0u; i < NC; i++) {
                o_part[v * NC + i] *= w_alpha[v];
            }
        }
    }
    let last = min(tl.span - min(tl.span, key0), nk);
    for (var j = 0u; j < last; j++) {
        for (var i = 0u; i < NC; i++) {
            let c = lid + 64u * i;
            if c < p.d {
                let x = kv_value(v_slot, v_base, j, col0 + c);
                for (var v = 0u; v < TV; v++) {
                    if j < w_seen[v] {
                        o_part[v * NC + i] += ps[v * PAGE + j] * x;
                    }
                }
            }
        }
    }
}

// Chunk `c` afresh into the chunk in progress.
fn chunk(tl: Tile, c: u32, lid: u32) {
    for (var i = 0u; i < TV * NC; i++) {
        o_part[i] = 0.0;
    }
    m_part = neg_inf();
    l_part = 0.0;
    let hi = min((c + 1u) * CHUNK_PAGES, (tl.span + PAGE - 1u) / PAGE);
    for (var pg = c * CHUNK_PAGES; pg < hi; pg++) {
        page(tl, pg, lid);
    }
}

fn reset_total() {
    for (var i = 0u; i < TV * NC; i++) {
        o_tot[i] = 0.0;
    }
    m_tot = neg_inf();
    l_tot = 0.0;
}

// Folds the chunk in progress into the total, vector by vector: m' = max(m, m_c),
// l' = l·e^(m−m') + l_c·e^(m_c−m'), o' likewise; a vector the chunk did not reach is left as
// it is, and an empty total takes the chunk as it is.
fn merge(lid: u32) {
    if lid < TV {
        var how = 0u;
        var a = 0.0;
        var b = 0.0;
        if l_part != 0.0 {
            if l_tot == 0.0 {
                how = 1u;
                m_tot = m_part;
                l_tot = l_part;
            } else {
                how = 2u;
                let m = max(m_tot, m_part);
                a = exp(m_tot - m);
                b = exp(m_part - m);
                l_tot = l_tot * a + l_part * b;
                m_tot = m;
            }
        }
        w_how[lid] = how;
        w_fa[lid] = a;
        w_fb[lid] = b;
    }
    workgroupBarrier();
    for (var v = 0u; v < TV; v++) {
        let how = w_how[v];
        for (var i = 0u; i < NC; i++) {
            if how == 1u {
                o_tot[v * NC + i] = o_part[v * NC + i];
            } else if how == 2u {
                o_tot[v * NC + i] = o_tot[v * NC + i] * w_fa[v] + o_part[v * NC + i] * w_fb[v];
            }
        }
    }
    workgroupBarrier();
}

// Partial `slot` of `state` into the chunk in progress.
fn load_partial(slot: u32, lid: u32) {
    for (var v = 0u; v < TV; v++) {
        let base = (slot * TV + v) * (p.d + 2u);
        for (var i = 0u; i < NC; i++) {
            let c = lid + 64u * i;
            if c < p.d {
                o_part[v * NC + i] = bitcast<f32>(state[base + 2u + c]);
            }
        }
    }
    if lid < TV {
        let base = (slot * TV + lid) * (p.d + 2u);
        m_part = bitcast<f32>(state[base]);
        l_part = bitcast<f32>(state[base + 1u]);
    }
}

// The total into slot `slot` of `state`.
fn store_total(slot: u32, lid: u32) {
    for (var v = 0u; v < TV; v++) {
        let base = (slot * TV + v) * (p.d + 2u);
        for (var i = 0u; i < NC; i++) {
            let c = lid + 64u * i;
            if c < p.d {
                state[base + 2u + c] = bitcast<u32>(o_tot[v * NC + i]);
            }
        }
    }
    if lid < TV {
        let base = (slot * TV + lid) * (p.d + 2u);
        state[base] = bitcast<u32>(m_tot);
        state[base + 1u] = bitcast<u32>(l_tot);
    }
}

// o / l of every vector of the tile into the output [rows, hq·d].
fn finish(tl: Tile, lid: u32) {
    if lid < TV {
        w_fa[lid] = 1.0 / l_tot;
    }
    workgroupBarrier();
    for (var v = 0u; v < tl.nv; v++) {
        let vi = tl.v0 + v;
        let head = tl.kvh * p.group + vi % p.group;
        let base = ((vi / p.group) * p.hq + head) * p.d;
        for (var i = 0u; i < NC; i++) {
            let c = lid + 64u * i;
            if c < p.d {
                dst[base + c] = bitcast<u32>(o_tot[v * NC + i] * w_fa[v]);
            }
        }
    }
}

// Chunks c_lo..c_hi of every tile: in order (a workgroup per tile and kv head, the running
// total carried in and out through `state` when the call takes several dispatches), or one
// chunk per workgroup (`split`: the chunk's partial to `state` for `attend_merge`).
@compute @workgroup_size(64)
fn attend(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let idx = wg_index(wid, nwg);
    var g = idx;
    var c0 = p.c_lo;
    var c1 = p.c_hi;
    if p.split == 1u {
        let per = p.c_hi - p.c_lo;
        g = idx / per;
        c0 = p.c_lo + idx % per;
        c1 = c0 + 1u;
    }
    if g >= p.tiles * p.hkv {
        return;
    }
    let tl = tile_of(g);
    if p.split == 1u && c0 >= tl.chunks {
        return;
    }
    load_queries(tl, lid);
    reset_total();
    if p.carry_in == 1u {
        load_partial(g, lid);
        o_tot = o_part;
        m_tot = m_part;
        l_tot = l_part;
    }
    workgroupBarrier();
    let end = min(c1, tl.chunks);
    for (var c = c0; c < end; c++) {
        chunk(tl, c, lid);
        merge(lid);
    }
    if p.split == 1u {
        store_total(g * p.chunks + c0, lid);
    } else if p.carry_out == 1u {
        store_total(g, lid);
    } else {
        finish(tl, lid);
    }
}

// The chunk partials of every tile merged in chunk order, normalised into the output.
@compute @workgroup_size(64)
fn attend_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if g >= p.tiles * p.hkv {
        return;
    }
    let tl = tile_of(g);
    reset_total();
    for (var c = 0u; c < tl.chunks; c++) {
        load_partial(g * p.chunks + c, lid);
        merge(lid);
    }
    finish(tl, lid);
}

// Weights in their GGML storage format: `x·Wᵀ` and embedding rows, decoding the blocks as
// they are read (layouts: crates/quant/src/*.rs; the host decoders there are the reference).
//
// A weight chunk is its rows' bytes, packed as on the host: blocks are not word-aligned
// (Q8_0 is 34 bytes, Q6_K 210), so the decoders read bytes out of `array<u32>` at computed
// byte offsets.
//
// Every format is read in *parts* of 32 elements: a part is a whole 32-element block (Q4_0,
// Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL), an eighth of a 256-element super-block (Q2_K … Q6_K,
// IQ4_XS), or 32 consecutive elements of a float row (the last part of a row may be short;
// its missing elements read as zero). A row of `cols` elements has `ceil(cols / 32)` parts.
// `dq` decodes a part into eight `vec4`s and `xoff` says which elements of the row each `vec4`
// holds (for the K-quants they are the element runs that the part's bytes encode, not 32
// consecutive elements). Each part's bytes are a contiguous few words, so consecutive threads
// taking consecutive parts read consecutive memory.
//
// Decoding is exact and in the host reference's order of operations, so `embed` is bit-exact
// against `qinfer_quant::dequantize_row`: every scale product below is exact in f32 (an f16
// times a ≤ 8-bit integer, times a ≤ 6-bit quant where a minimum follows), so a fused
// multiply-add the driver may form rounds the same as the host's separate multiply and add.
//
// Each entry point passes its format as a constant to one generic body; after inlining, the
// driver folds every `switch` on it away.

struct Params {
    // Rows of W in this chunk.
    rows: u32,
    // Elements per row.
    cols: u32,
    // Bytes per stored row.
    row_bytes: u32,
    // Tokens (matmul) or ids (embed).
    n: u32,
    // The chunk's first row in W.
    row0: u32,
    // W's rows: the output's row stride (matmul).
    out_rows: u32,
    // matmul: threads per row (a power of two ≤ 32; matmul.rs `team_size`).
    team: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// One chunk of the weight: its rows' stored bytes.
@group(0) @binding(2) var<storage, read> wq: array<u32>;
// matmul: the activations `[n, cols]` (f32 bits); embed: the row ids.
@group(0) @binding(3) var<storage, read> xs: array<vec4<u32>>;

const F32: u32 = 0u;
const F16: u32 = 1u;
const BF16: u32 = 2u;
const Q4_0: u32 = 3u;
const Q4_1: u32 = 4u;
const Q5_0: u32 = 5u;
const Q5_1: u32 = 6u;
const Q8_0: u32 = 7u;
const Q2_K: u32 = 8u;
const Q3_K: u32 = 9u;
const Q4_K: u32 = 10u;
const Q5_K: u32 = 11u;
const Q6_K: u32 = 12u;
const IQ4_NL: u32 = 13u;
const IQ4_XS: u32 = 14u;

// 32 decoded weights: `xoff(fmt, part, g)` is the row element of `w[g].x`.
alias W = array<vec4<f32>, 8>;

// --- Reading bytes ---

// The byte at byte offset `o`.
fn byte_at(o: u32) -> u32 {
    return (wq[o >> 2u] >> ((o & 3u) * 8u)) & 0xFFu;
}

// The little-endian word at byte offset `o`, any alignment.
fn word_at(o: u32) -> u32 {
    let i = o >> 2u;
    let s = (o & 3u) * 8u;
    let lo = wq[i];
    let hi = wq[i + 1u];
    return select((lo >> s) | (hi << ((32u - s) & 31u)), lo, s == 0u);
}

// The f16 at an even byte offset, widened (exactly).
fn f16_at(o: u32) -> f32 {
    return unpack2x16float(wq[o >> 2u] >> ((o & 2u) * 8u)).x;
}

// The signed byte at `o`.
fn i8_at(o: u32) -> i32 {
    return (bitcast<i32>(byte_at(o)) << 24u) >> 24u;
}

// Bits `shift..shift + width` (`mask = 2^width − 1`) of each byte of `w`.
fn fields(w: u32, shift: u32, mask: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(mask);
}

// The four bytes of `w` as signed integers.
fn i8x4(w: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u));
    return vec4<f32>(v >> vec4<u32>(24u));
}

// IQ4_NL's codebook (`qinfer_quant::iq4_nl::KVALUES`) as signed bytes, four per word.
const KV0: u32 = 0xBFAD9881u; // -127 -104 -83 -65
const KV1: u32 = 0xF6EADDCFu; //  -49  -35 -22 -10
const KV2: u32 = 0x26190D01u; //    1   13  25  38
const KV3: u32 = 0x71594535u; //   53   69  89 113

// The codebook values of four 4-bit indices (selects rather than an indexed array, which
// drivers may place in slow local memory).
fn kvalues(q: vec4<u32>) -> vec4<f32> {
    let hi = (q & vec4<u32>(8u)) != vec4<u32>(0u);
    let odd = (q & vec4<u32>(4u)) != vec4<u32>(0u);
    let word = select(select(vec4<u32>(KV0), vec4<u32>(KV1), odd),
                      select(vec4<u32>(KV2), vec4<u32>(KV3), odd), hi);
    let v = bitcast<vec4<i32>>(word << ((vec4<u32>(3u) - (q & vec4<u32>(3u))) * 8u));
    return vec4<f32>(v >> vec4<u32>(24u));
}

// --- Decoding one part per format ---

// Zeroes the elements of a float row's last part that lie past the row (`e`: `v.x`'s element).
fn in_row(v: vec4<f32>, e: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, vec4<u32>(e) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.cols));
}

fn dq_f32(row: u32, part: u32) -> W {
    var w: W;
    let i = (row >> 2u) + part * 32u;
    for (var g = 0u; g < 8u; g++) {
        let k = i + 4u * g;
        let v = vec4<f32>(bitcast<f32>(wq[k]), bitcast<f32>(wq[k + 1u]),
                          bitcast<f32>(wq[k + 2u]), bitcast<f32>(wq[k + 3u]));
        w[g] = in_row(v, part * 32u + 4u * g);
    }
    return w;
}

fn dq_f16(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 64u;
    for (var g = 0u; g < 8u; g++) {
        let v = vec4<f32>(unpack2x16float(word_at(o + 8u * g)), unpack2x16float(word_at(o + 8u * g + 4u)));
        w[g] = in_row(v, part * 32u + 4u * g);
    }
    return w;
}

fn bf16x2(u: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(u << 16u), bitcast<f32>(u & 0xFFFF0000u));
}

fn dq_bf16(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 64u;
    for (var g = 0u; g < 8u; g++) {
        let v = vec4<f32>(bf16x2(word_at(o + 8u * g)), bf16x2(word_at(o + 8u * g + 4u)));
        w[g] = in_row(v, part * 32u + 4u * g);
    }
    return w;
}

// 18 bytes: d, 16 bytes of nibbles (element j low nibble of byte j, element 16 + j high).
fn dq_q4_0(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 18u;
    let d = f16_at(o);
    for (var g = 0u; g < 4u; g++) {
        let q = word_at(o + 2u + 4u * g);
        w[g] = d * vec4<f32>(vec4<i32>(fields(q, 0u, 15u)) - 8);
        w[g + 4u] = d * vec4<f32>(vec4<i32>(fields(q, 4u, 15u)) - 8);
    }
    return w;
}

// 20 bytes: d, m, nibbles as Q4_0; `d·q + m`.
fn dq_q4_1(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 20u;
    let d = f16_at(o);
    let m = f16_at(o + 2u);
    for (var g = 0u; g < 4u; g++) {
        let q = wq[(o >> 2u) + 1u + g];
        w[g] = d * vec4<f32>(fields(q, 0u, 15u)) + m;
        w[g + 4u] = d * vec4<f32>(fields(q, 4u, 15u)) + m;
    }
    return w;
}

// Bit 4 of elements `first..first + 4` (bits of the block's 32-bit high mask).
fn high_bits(qh: u32, first: u32) -> vec4<u32> {
    return ((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + first)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

// 22 bytes: d, 32-bit mask of fifth bits, nibbles as Q4_0; `d·(q − 16)`.
fn dq_q5_0(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 22u;
    let d = f16_at(o);
    let qh = word_at(o + 2u);
    for (var g = 0u; g < 4u; g++) {
        let q = word_at(o + 6u + 4u * g);
        let lo = fields(q, 0u, 15u) | high_bits(qh, 4u * g);
        let hi = fields(q, 4u, 15u) | high_bits(qh, 16u + 4u * g);
        w[g] = d * vec4<f32>(vec4<i32>(lo) - 16);
        w[g + 4u] = d * vec4<f32>(vec4<i32>(hi) - 16);
    }
    return w;
}

// 24 bytes: d, m, fifth bits, nibbles; `d·q + m`.
fn dq_q5_1(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 24u;
    let d = f16_at(o);
    let m = f16_at(o + 2u);
    let qh = wq[(o >> 2u) + 1u];
    for (var g = 0u; g < 4u; g++) {
        let q = wq[(o >> 2u) + 2u + g];
        let lo = fields(q, 0u, 15u) | high_bits(qh, 4u * g);
        let hi = fields(q, 4u, 15u) | high_bits(qh, 16u + 4u * g);
        w[g] = d * vec4<f32>(lo) + m;
        w[g + 4u] = d * vec4<f32>(hi) + m;
    }
    return w;
}

// 34 bytes: d, 32 signed bytes.
fn dq_q8_0(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 34u;
    let d = f16_at(o);
    for (var g = 0u; g < 8u; g++) {
        w[g] = d * i8x4(word_at(o + 2u + 4u * g));
    }
    return w;
}

// 18 bytes: d, nibbles as Q4_0 indexing the codebook.
fn dq_iq4_nl(row: u32, part: u32) -> W {
    var w: W;
    let o = row + part * 18u;
    let d = f16_at(o);
    for (var g = 0u; g < 4u; g++) {
        let q = word_at(o + 2u + 4u * g);
        w[g] = d * kvalues(fields(q, 0u, 15u));
        w[g + 4u] = d * kvalues(fields(q, 4u, 15u));
    }
    return w;
}

// Q2_K, 84 bytes: scales/mins `0..16`, quants `16..80`, d, dmin. Part `h·4 + m` (`h` the half
// of 128, `m` a quarter of the 32 quant bytes of that half) holds elements
// `128h + 32j + 8m + l` (`j < 4`, `l < 8`): bits `2j` of quant bytes `32h + 8m + l`.
fn dq_q2_k(row: u32, part: u32) -> W {
    var w: W;
    let o = row + (part / 8u) * 84u;
    let h = (part % 8u) / 4u;
    let m = part % 4u;
    let d = f16_at(o + 80u);
    let dmin = f16_at(o + 82u);
    let qi = (o + 16u + 32u * h + 8u * m) >> 2u;
    for (var j = 0u; j < 4u; j++) {
        let sc = byte_at(o + 8u * h + 2u * j + m / 2u);
        let scale = d * f32(sc & 15u);
        let mn = dmin * f32(sc >> 4u);
        for (var l = 0u; l < 2u; l++) {
            w[2u * j + l] = scale * vec4<f32>(fields(wq[qi + l], 2u * j, 3u)) - mn;
        }
    }
    return w;
}

// Q3_K's signed 6-bit scale `k` (packed at `o + 96`).
fn q3_k_scale(o: u32, k: u32) -> i32 {
    let low = select(byte_at(o + 96u + k - 8u) >> 4u, byte_at(o + 96u + k) & 15u, k < 8u);
    let high = (byte_at(o + 104u + k % 4u) >> (2u * (k / 4u))) & 3u;
    return i32(low | (high << 4u)) - 32;
}

// Q3_K, 110 bytes: high-bit mask `0..32`, low bits `32..96` laid out as Q2_K's quants, scales,
// d. Parts as Q2_K's; the high bit of element `32i + l` is bit `i` of mask byte `l` (set: no
// offset, clear: −4).
fn dq_q3_k(row: u32, part: u32) -> W {
    var w: W;
    let o = row + (part / 8u) * 110u;
    let h = (part % 8u) / 4u;
    let m = part % 4u;
    let d = f16_at(o + 108u);
    for (var j = 0u; j < 4u; j++) {
        let scale = d * f32(q3_k_scale(o, 8u * h + 2u * j + m / 2u));
        for (var l = 0u; l < 2u; l++) {
            let low = fields(word_at(o + 32u + 32u * h + 8u * m + 4u * l), 2u * j, 3u);
            let high = fields(word_at(o + 8u * m + 4u * l), 4u * h + j, 1u);
            let q = vec4<i32>(low) - 4 * (1 - vec4<i32>(high));
            w[2u * j + l] = scale * vec4<f32>(q);
        }
    }
    return w;
}

// Q4_K/Q5_K's 6-bit scale (`.x`) and minimum (`.y`) of sub-block `s`, packed at `o + 4`.
fn k_scale_min(o: u32, s: u32) -> vec2<u32> {
    let b = o + 4u;
    if s < 4u {
        return vec2<u32>(byte_at(b + s) & 63u, byte_at(b + s + 4u) & 63u);
    }
    let lo = byte_at(b + s + 4u);
    return vec2<u32>((lo & 15u) | ((byte_at(b + s - 4u) >> 6u) << 4u),
                     (lo >> 4u) | ((byte_at(b + s) >> 6u) << 4u));
}

// The scales and mins of sub-blocks `2c` and `2c + 1` of the Q4_K/Q5_K super-block at byte
// `o`: `(d·scale₀, dmin·min₀, d·scale₁, dmin·min₁)`.
fn k_pair(o: u32, c: u32) -> vec4<f32> {
    let d = f16_at(o);
    let dmin = f16_at(o + 2u);
    let s0 = k_scale_min(o, 2u * c);
    let s1 = k_scale_min(o, 2u * c + 1u);
    return vec4<f32>(d * f32(s0.x), dmin * f32(s0.y), d * f32(s1.x), dmin * f32(s1.y));
}

// Q4_K, 144 bytes: d, dmin, packed scales/mins, quants `16..144`. Part `2c + n` reads quant
// bytes `32c + 16n..+16`: low nibbles are elements `64c + 16n + l` (sub-block `2c`), high
// nibbles `64c + 32 + 16n + l` (sub-block `2c + 1`). `(d·scale)·q − dmin·min`.
fn dq_q4_k(row: u32, part: u32) -> W {
    var w: W;
    let o = row + (part / 8u) * 144u;
    let c = (part % 8u) / 2u;
    let n = part % 2u;
    let sm = k_pair(o, c);
    let scale0 = sm.x;
    let min0 = sm.y;
    let scale1 = sm.z;
    let min1 = sm.w;
    let qi = (o + 16u + 32u * c + 16u * n) >> 2u;
    for (var g = 0u; g < 4u; g++) {
        let q = wq[qi + g];
        w[g] = scale0 * vec4<f32>(fields(q, 0u, 15u)) - min0;
        w[g + 4u] = scale1 * vec4<f32>(fields(q, 4u, 15u)) - min1;
    }
    return w;
}

// Q5_K, 176 bytes: d, dmin, scales/mins, fifth bits `16..48`, nibbles `48..176` as Q4_K's.
// The fifth bit of element `32i + l` is bit `i` of byte `16 + l`.
fn dq_q5_k(row: u32, part: u32) -> W {
    var w: W;
    let o = row + (part / 8u) * 176u;
    let c = (part % 8u) / 2u;
    let n = part % 2u;
    let sm = k_pair(o, c);
    let scale0 = sm.x;
    let min0 = sm.y;
    let scale1 = sm.z;
    let min1 = sm.w;
    let qi = (o + 48u + 32u * c + 16u * n) >> 2u;
    let hi = (o + 16u + 16u * n) >> 2u;
    for (var g = 0u; g < 4u; g++) {
        let q = wq[qi + g];
        let qh = wq[hi + g];
        let lo = fields(q, 0u, 15u) | (fields(qh, 2u * c, 1u) << vec4<u32>(4u));
        let up = fields(q, 4u, 15u) | (fields(qh, 2u * c + 1u, 1u) << vec4<u32>(4u));
        w[g] = scale0 * vec4<f32>(lo) - min0;
        w[g + 4u] = scale1 * vec4<f32>(up) - min1;
    }
    return w;
}

// Q6_K, 210 bytes: low nibbles `0..128`, high bit pairs `128..192`, signed scales `192..208`,
// d. Part `4h + m` holds elements `128h + 32j + 8m + l` (`j < 4`, `l < 8`): nibble `j / 2` of
// byte `64h + 32(j % 2) + 8m + l`, bits `2j` of byte `128 + 32h + 8m + l`.
// `(d·scale)·(q − 32)`.
fn dq_q6_k(row: u32, part: u32) -> W {
    var w: W;
    let o = row + (part / 8u) * 210u;
    let h = (part % 8u) / 4u;
    let m = part % 4u;
    let d = f16_at(o + 208u);
    for (var j = 0u; j < 4u; j++) {
        let scale = d * f32(i8_at(o + 192u + 8u * h + 2u * j + m / 2u));
        for (var l = 0u; l < 2u; l++) {
            let low = fields(word_at(o + 64u * h + 32u * (j % 2u) + 8u * m + 4u * l), 4u * (j / 2u), 15u);
            let high = fields(word_at(o + 128u + 32u * h + 8u * m + 4u * l), 2u * j, 3u);
            w[2u * j + l] = scale * vec4<f32>(vec4<i32>(low | (high << vec4<u32>(4u))) - 32);
        }
    }
    return w;
}

// IQ4_XS, 136 bytes: d, high scale bits (u16), low scale nibbles, codebook indices
// `8..136`. Part `s` is sub-block `s`, its 16 index bytes packed as an IQ4_NL block's.
// `(d·(scale − 32))·KVALUES[q]`.
fn dq_iq4_xs(row: u32, part: u32) -> W {
    var w: W;
    let o = row + (part / 8u) * 136u;
    let s = part % 8u;
    let d = f16_at(o);
    let high = (wq[o >> 2u] >> (16u + 2u * s)) & 3u;
    let low = (byte_at(o + 4u + s / 2u) >> (4u * (s % 2u))) & 15u;
    let scale = d * f32(i32(low | (high << 4u)) - 32);
    let qi = (o + 8u + 16u * s) >> 2u;
    for (var g = 0u; g < 4u; g++) {
        let q = wq[qi + g];
        w[g] = scale * kvalues(fields(q, 0u, 15u));
        w[g + 4u] = scale * kvalues(fields(q, 4u, 15u));
    }
    return w;
}

// Part `part` of the row at byte `row` of the chunk.
fn dq(fmt: u32, row: u32, part: u32) -> W {
    var w: W;
    switch fmt {
        case F32: { w = dq_f32(row, part); }
        case F16: { w = dq_f16(row, part); }
        case BF16: { w = dq_bf16(row, part); }
        case Q4_0: { w = dq_q4_0(row, part); }
        case Q4_1: { w = dq_q4_1(row, part); }
        case Q5_0: { w = dq_q5_0(row, part); }
        case Q5_1: { w = dq_q5_1(row, part); }
        case Q8_0: { w = dq_q8_0(row, part); }
        case Q2_K: { w = dq_q2_k(row, part); }
        case Q3_K: { w = dq_q3_k(row, part); }
        case Q4_K: { w = dq_q4_k(row, part); }
        case Q5_K: { w = dq_q5_k(row, part); }
        case Q6_K: { w = dq_q6_k(row, part); }
        case IQ4_NL: { w = dq_iq4_nl(row, part); }
        default: { w = dq_iq4_xs(row, part); }
    }
    return w;
}

// The row element of `dq(fmt, _, part)[g].x`.
fn xoff(fmt: u32, part: u32, g: u32) -> u32 {
    let sup = (part / 8u) * 256u;
    let i = part % 8u;
    switch fmt {
        case Q2_K, Q3_K, Q6_K: {
            return sup + 128u * (i / 4u) + 32u * (g / 2u) + 8u * (i % 4u) + 4u * (g % 2u);
        }
        case Q4_K, Q5_K: {
            return sup + 64u * (i / 2u) + 16u * (i % 2u) + 32u * (g / 4u) + 4u * (g % 4u);
        }
        case IQ4_XS: {
            return part * 32u + 16u * (g / 4u) + 4u * (g % 4u);
        }
        default: {
            return part * 32u + 4u * g;
        }
    }
}

fn x_at(i: u32) -> f32 {
    return bitcast<f32>(xs[i >> 2u][i & 3u]);
}

// Elements `e..e + 4` of the activation row starting at `base` (past the row: zero). Rows of
// block formats are whole vec4s; float rows may have any width.
fn x4(fmt: u32, base: u32, e: u32) -> vec4<f32> {
    let i = base + e;
    if fmt > BF16 || ((i & 3u) == 0u && e + 4u <= p.cols) {
        return bitcast<vec4<f32>>(xs[i >> 2u]);
    }
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if e + c < p.cols { v[c] = x_at(i + c); }
    }
    return v;
}

// --- matmul: out[t, row0 + r] = Σ_e x[t, e] · W[r, e] ---
//
// A workgroup takes `(WG / p.team) · RPT` rows and up to TOK tokens: teams of `p.team`
// threads (as many as a row has parts, at most 32), each thread RPT rows (an activation vec4
// read once serves RPT rows). A team's threads stride over the row's parts (consecutive
// threads, consecutive parts); each thread keeps one sum per row and token; a final pass adds
// the team's partial sums in lane order. Every (row, token) sum is taken in the same order
// whatever the token count and the token's place in the batch (the team size depends on the
// row width alone), so a token's result does not depend on the batch it came in.

const WG: u32 = 128u;
const RPT: u32 = 2u;
const TOK: u32 = 8u;
// One thread's partial sums in `red`, padded by one against bank conflicts.
const SLOT: u32 = RPT * TOK + 1u;

var<workgroup> red: array<f32, WG * SLOT>;

fn matmul(fmt: u32, wg: u32, lid: u32) {
    let team_size = p.team;
    let rows_wg = (WG / team_size) * RPT;
    let row_groups = (p.rows + rows_wg - 1u) / rows_wg;
    if wg >= row_groups * ((p.n + TOK - 1u) / TOK) { return; }
    let first_row = (wg % row_groups) * rows_wg;
    let tok0 = (wg / row_groups) * TOK;
    let nt = min(TOK, p.n - tok0);
    let team = lid / team_size;
    let lane = lid % team_size;
    let row_a = first_row + team * RPT;
    let parts = (p.cols + 31u) / 32u;

    var acc: array<f32, RPT * TOK>; // [r · TOK + k]
    for (var part = lane; part < parts; part += team_size) {
        var w: array<W, RPT>;
        for (var r = 0u; r < RPT; r++) {
            if row_a + r < p.rows { w[r] = dq(fmt, (row_a + r) * p.row_bytes, part); }
        }
        for (var g = 0u; g < 8u; g++) {
            let e = xoff(fmt, part, g);
            for (var k = 0u; k < TOK; k++) {
                if k < nt {
                    let x = x4(fmt, (tok0 + k) * p.cols, e);
                    for (var r = 0u; r < RPT; r++) {
                        acc[r * TOK + k] += dot(w[r][g], x);
                    }
                }
            }
        }
    }
    for (var i = 0u; i < RPT * TOK; i++) {
        red[lid * SLOT + i] = acc[i];
    }
    workgroupBarrier();
    for (var o = lid; o < rows_wg * TOK; o += WG) {
        let rr = o / TOK;
        let k = o % TOK;
        let row = first_row + rr;
        if row < p.rows && k < nt {
            let base = (rr / RPT) * team_size * SLOT + (rr % RPT) * TOK + k;
            var s = 0.0;
            for (var i = 0u; i < team_size; i++) {
                s += red[base + i * SLOT];
            }
            out[(tok0 + k) * p.out_rows + p.row0 + row] = s;
        }
    }
}

// --- embed: out[n, e] = W[ids[n], e] for the ids in this chunk ---
//
// A thread per (id, part), EMBED_WG threads per workgroup.

const EMBED_WG: u32 = 64u;

fn embed(fmt: u32, wg: u32, lid: u32) {
    let parts = (p.cols + 31u) / 32u;
    let t = wg * EMBED_WG + lid;
    if t >= p.n * parts { return; }
    let n = t / parts;
    let part = t % parts;
    let id = xs[n >> 2u][n & 3u];
    if id < p.row0 || id - p.row0 >= p.rows { return; }
    let w = dq(fmt, (id - p.row0) * p.row_bytes, part);
    for (var g = 0u; g < 8u; g++) {
        let e = xoff(fmt, part, g);
        for (var c = 0u; c < 4u; c++) {
            if e + c < p.cols { out[n * p.cols + e + c] = w[g][c]; }
        }
    }
}

// --- Entry points: one matmul and one embed per format ---

@compute @workgroup_size(WG)
fn matmul_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { matmul(F32, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { matmul(F16, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_bf16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(BF16, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q4_0, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q4_1, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q5_0, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q5_1, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q8_0, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q2_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q3_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q4_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q5_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) { matmul(Q6_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) { matmul(IQ4_NL, wg_index(wid, nwg), lid); }
@compute @workgroup_size(WG)
fn matmul_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) { matmul(IQ4_XS, wg_index(wid, nwg), lid); }

@compute @workgroup_size(EMBED_WG)
fn embed_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) { embed(F32, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) { embed(F16, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_bf16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(BF16, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q4_0, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q4_1, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q5_0, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q5_1, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q8_0, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q2_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q3_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q4_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q5_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) { embed(Q6_K, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) { embed(IQ4_NL, wg_index(wid, nwg), lid); }
@compute @workgroup_size(EMBED_WG)
fn embed_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) { embed(IQ4_XS, wg_index(wid, nwg), lid); }

// Runs a package's ONNX file in onnxruntime-node (no Python) on the golden tile, and compares its
// outputs with the golden ones. Usage: node golden.mjs DESCRIPTOR.json
//
// The descriptor (written by tests/test_node_runtime.py) names raw little-endian files: the golden
// tile's decoded pixels (uint8 [T, T, 3], RGB) and its 8x8 luma table (float32 [64], natural order),
// the feeds the Python runtime builds, and the expected outputs. Two runs:
//   "given": the Python runtime's feeds, as they are (the binding and the file agree);
//   "built": feeds this script builds from the pixels and the table alone, following
//            docs/INTERFACES.md ("Calling the model from C, Java, Swift"): what a device app does.
// Prints one JSON line; exits 1 when a run's outputs are further than atol from the golden ones.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";

const desc = JSON.parse(readFileSync(process.argv[2], "utf8"));
const base = dirname(process.argv[2]);
// the module lives where the Makefile installed it (NODE_PATH), not next to this script
const require = createRequire(join(process.env.ORT_NODE_DIR || process.cwd(), "noop.js"));
const ort = require("onnxruntime-node");

const TYPES = { uint8: Uint8Array, float32: Float32Array };
function load(spec) {
  const buf = readFileSync(join(base, spec.file));
  const T = TYPES[spec.dtype];
  // copy into an aligned buffer: Node's file buffers may start at any byte offset
  const a = new T(buf.byteLength / T.BYTES_PER_ELEMENT);
  new Uint8Array(a.buffer).set(buf);
  return a;
}

const f32 = Math.fround;

// (x / 255 - mean) / std in float32 arithmetic, planar [1, 3, T, T]
function normalized(px, T, mean, std) {
  const out = new Float32Array(3 * T * T);
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < T * T; i++)
      out[c * T * T + i] = f32(f32(f32(px[i * 3 + c] * f32(1 / 255)) - f32(mean[c])) / f32(std[c]));
  return out;
}

// the INT8-CPU model's raw input: pad by one pixel with padFill, 2x2 space-to-depth, NHWC
// [1, T/2+1, T/2+1, 12], channel (dy*2 + dx)*3 + c = padded pixel (2i+dy, 2j+dx), colour c
function spaceToDepth(px, T, padFill) {
  const P = T + 2, H = T / 2 + 1;
  const at = (y, x, c) => (y < 1 || x < 1 || y > T || x > T) ? padFill[c] : px[((y - 1) * T + (x - 1)) * 3 + c];
  const out = new Uint8Array(H * H * 12);
  for (let i = 0; i < H; i++)
    for (let j = 0; j < H; j++)
      for (let dy = 0; dy < 2; dy++)
        for (let dx = 0; dx < 2; dx++)
          for (let c = 0; c < 3; c++)
            out[((i * H + j) * 12) + (dy * 2 + dx) * 3 + c] = at(2 * i + dy, 2 * j + dx, c);
  return out;
}

// natural index of each zigzag position (JPEG's coefficient order)
const ZIGZAG = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13,
  6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46,
  53, 60, 61, 54, 47, 55, 62, 63];

function roundHalfEven(v) {
  const r = Math.round(v);
  return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

// the compression-history stream: per 8x8 block of the tile's BT.601 luma minus 128, the
// orthonormal DCT-II coefficient (u, v) of the first F AC zigzag frequencies, divided by the
// table's step (0: 1), rounded half to even, |.|, clipped. Layout "nhwc-u8" (what packages take):
// uint8 [1, T/8, T/8, F]; else float32 [1, F, T/8, T/8]
function dctStream(px, T, q, F, clip, nhwc) {
  const D = [];
  for (let u = 0; u < 8; u++) {
    D.push([]);
    for (let x = 0; x < 8; x++)
      D[u].push(Math.cos((2 * x + 1) * u * Math.PI / 16) * Math.sqrt(2 / 8) / (u === 0 ? Math.SQRT2 : 1));
  }
  const Y = new Float64Array(T * T);
  for (let i = 0; i < T * T; i++)
    Y[i] = f32(f32(f32(f32(px[3 * i] * f32(0.299)) + f32(px[3 * i + 1] * f32(0.587))) + f32(px[3 * i + 2] * f32(0.114))) - 128);
  const B = T / 8, out = nhwc ? new Uint8Array(B * B * F) : new Float32Array(F * B * B);
  for (let f = 0; f < F; f++) {
    const k = ZIGZAG[1 + f], u = k >> 3, v = k & 7, step = q[k] > 0 ? q[k] : 1;
    for (let by = 0; by < B; by++)
      for (let bx = 0; bx < B; bx++) {
        let s = 0;
        for (let y = 0; y < 8; y++)
          for (let x = 0; x < 8; x++) s += D[u][y] * D[v][x] * Y[(by * 8 + y) * T + bx * 8 + x];
        out[nhwc ? (by * B + bx) * F + f : (f * B + by) * B + bx] = Math.min(Math.abs(roundHalfEven(s / step)), clip);
      }
  }
  return out;
}

function maxErr(a, b) {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const session = await ort.InferenceSession.create(desc.model);
const expected = Object.fromEntries(Object.entries(desc.expected).map(([k, v]) => [k, load(v)]));

async function run(feeds) {
  const out = await session.run(feeds);
  const err = Math.max(...Object.keys(expected).map((k) => {
    if (out[k].data.length !== expected[k].length) return Infinity;
    return maxErr(out[k].data, expected[k]);
  }));
  return { err, fake_logit: out.fake_logit.data[0] };
}

const given = {};
for (const [name, spec] of Object.entries(desc.feeds)) given[name] = new ort.Tensor(spec.dtype, load(spec), spec.shape);

const T = desc.tile;
const px = load(desc.pixels);
const q = load(desc.qtable);
const built = {};
let dctMismatch = null;
if (desc.format === "u8-nhwc") built.image = new ort.Tensor("uint8", px, [1, T, T, 3]);  // the pixels graph
else if (desc.format === "u8-s2d2") built.image = new ort.Tensor("uint8", spaceToDepth(px, T, desc.pad_fill), [1, T / 2 + 1, T / 2 + 1, 12]);
else built.image = new ort.Tensor("float32", normalized(px, T, desc.mean, desc.std), [1, 3, T, T]);
if (desc.format === "u8-nhwc") built.qtable = new ort.Tensor("float32", q, [1, 64]);  // it makes the stream itself
else if (desc.dct) {
  const nhwc = desc.dct.layout === "nhwc-u8", F = desc.dct.freqs;
  const d = dctStream(px, T, q, F, desc.dct.clip, nhwc);
  built.dct = nhwc ? new ort.Tensor("uint8", d, [1, T / 8, T / 8, F]) : new ort.Tensor("float32", d, [1, F, T / 8, T / 8]);
  built.qtable = new ort.Tensor("float32", q, [1, 64]);
  if (given.dct) dctMismatch = d.reduce((n, v, i) => n + (v !== given.dct.data[i] ? 1 : 0), 0);
}
const imageMismatch = given.image ? built.image.data.reduce((n, v, i) => n + (v !== given.image.data[i] ? 1 : 0), 0) : null;

const res = { given: await run(given), built: await run(built), dct_mismatch: dctMismatch,
  image_mismatch: imageMismatch, atol: desc.atol, ort_version: ort.env.versions?.node ?? null };
console.log(JSON.stringify(res));
process.exit(res.given.err <= desc.atol && res.built.err <= desc.atol ? 0 : 1);

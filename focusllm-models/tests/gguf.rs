//! Tests of the GGUF reader, dequantizers and tokenizer.
//!
//! Most tests write small synthetic GGUF files whose values are known by construction. The tests
//! marked "real file" read SmolLM2-135M-Instruct (Q4_1): from `FOCUSLLM_MODEL` if it names a
//! `.gguf`, else from `$FOCUSLLM_HOME` (default `~/.cache/focusllm`). Without it they print
//! `SKIP: ...` and pass, except under CI (`CI` set), where a missing model is a failure.

use std::path::{Path, PathBuf};

use focusllm_models::ModelError;
use focusllm_models::gguf::{GgufFile, GgufValue, tokenizer_from_gguf, unpermute_qk_rows};

// ---------------------------------------------------------------------------------------------
// Synthetic GGUF files
// ---------------------------------------------------------------------------------------------

/// A metadata value to write: GGUF type id and its encoded bytes.
struct Kv {
    key: String,
    ty: u32,
    bytes: Vec<u8>,
}

/// A tensor to write. `offset: None` places it after the previous one (aligned).
struct TensorSpec {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

/// Writes GGUF files byte by byte, independently of the reader under test.
struct GgufWriter {
    magic: [u8; 4],
    version: u32,
    alignment: u64,
    kvs: Vec<Kv>,
    tensors: Vec<TensorSpec>,
}

fn gguf_string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

impl GgufWriter {
    fn new() -> Self {
        Self {
            magic: *b"GGUF",
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    fn kv(mut self, key: &str, ty: u32, bytes: Vec<u8>) -> Self {
        self.kvs.push(Kv {
            key: key.to_owned(),
            ty,
            bytes,
        });
        self
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv(key, 4, v.to_le_bytes().to_vec())
    }

    fn kv_str(self, key: &str, v: &str) -> Self {
        self.kv(key, 8, gguf_string(v.as_bytes()))
    }

    fn kv_str_array(self, key: &str, items: &[&str]) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            b.extend(gguf_string(s.as_bytes()));
        }
        self.kv(key, 9, b)
    }

    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }

    fn tensor_at(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>, offset: u64) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            data,
            offset: Some(offset),
        });
        self
    }

    /// The file bytes. There is no padding after the last tensor, so that cutting the file
    /// anywhere truncates something.
    fn build(&self) -> Vec<u8> {
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut out = self.magic.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            out.extend(gguf_string(kv.key.as_bytes()));
            out.extend_from_slice(&kv.ty.to_le_bytes());
            out.extend_from_slice(&kv.bytes);
        }
        let mut offsets = Vec::new();
        let mut next = 0u64;
        for t in &self.tensors {
            let off = t.offset.unwrap_or(next);
            offsets.push(off);
            // Saturating: some tests place empty tensors at absurd offsets.
            next = align(off.saturating_add(t.data.len() as u64).min(u64::MAX / 2));
            out.extend(gguf_string(t.name.as_bytes()));
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        let data_start = align(out.len() as u64) as usize;
        out.resize(data_start, 0);
        for (t, &off) in self
            .tensors
            .iter()
            .zip(&offsets)
            .filter(|(t, _)| !t.data.is_empty())
        {
            let at = data_start + off as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        out
    }
}

/// A file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "focusllm-gguf-test-{}-{tag}.gguf",
            std::process::id()
        ));
        std::fs::write(&path, bytes).expect("write temp file");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn open_bytes(tag: &str, bytes: &[u8]) -> Result<GgufFile, ModelError> {
    let f = TempFile::new(tag, bytes);
    // The map stays valid after the file is unlinked (on Unix); the tests only read it.
    GgufFile::open(f.path())
}

fn gguf_reason(r: Result<GgufFile, ModelError>) -> String {
    match r {
        Err(ModelError::Gguf { reason, .. }) => reason,
        Err(other) => panic!("expected ModelError::Gguf, got {other:?}"),
        Ok(_) => panic!("expected an error, the file opened"),
    }
}

fn f16_bits(bits: u16) -> [u8; 2] {
    bits.to_le_bytes()
}

const F16_ONE: u16 = 0x3C00;
const F16_HALF: u16 = 0x3800;
const F16_QUARTER: u16 = 0x3400;
const F16_TWO: u16 = 0x4000;
const F16_MINUS_ONE: u16 = 0xBC00;

/// Q8_0 block: d = 0.5, q_i = i - 16, so w_i = (i - 16) / 2.
fn q8_0_block() -> Vec<u8> {
    let mut b = f16_bits(F16_HALF).to_vec();
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    b
}

/// Q4_0 block: d = 2, byte j = (15 - j) << 4 | j, so w_j = 2 (j - 8), w_{j+16} = 2 (7 - j).
fn q4_0_block() -> Vec<u8> {
    let mut b = f16_bits(F16_TWO).to_vec();
    b.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
    b
}

/// Two Q4_1 blocks: (d = 0.25, m = -1, byte j = (3j mod 16) << 4 | j) and
/// (d = 1, m = 0.5, every byte 0x0F).
fn q4_1_blocks() -> Vec<u8> {
    let mut b = f16_bits(F16_QUARTER).to_vec();
    b.extend_from_slice(&f16_bits(F16_MINUS_ONE));
    b.extend((0..16u8).map(|j| (((3 * j) % 16) << 4) | j));
    b.extend_from_slice(&f16_bits(F16_ONE));
    b.extend_from_slice(&f16_bits(F16_HALF));
    b.extend([0x0F; 16]);
    b
}

/// A valid file with one tensor of each simple type.
fn valid_writer() -> GgufWriter {
    let f32_data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // 1, -2.5, 0.5, 65504 (largest f16)
    let f16_data: Vec<u8> = [0x3C00u16, 0xC100, 0x3800, 0x7BFF]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // bf16 1.0 and -3.0
    let bf16_data: Vec<u8> = [0x3F80u16, 0xC040]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    GgufWriter::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv("llama.rope.freq_base", 6, 10000.0f32.to_le_bytes().to_vec())
        .kv("flag", 7, vec![1])
        .kv("neg", 5, (-3i32).to_le_bytes().to_vec())
        .kv_str_array("list", &["a", "bc"])
        .tensor("a.f32", &[3, 2], 0, f32_data)
        .tensor("b.f16", &[4], 1, f16_data)
        .tensor("c.bf16", &[2], 30, bf16_data)
        .tensor("d.q8_0", &[32], 8, q8_0_block())
        .tensor("e.q4_0", &[32], 2, q4_0_block())
        .tensor("f.q4_1", &[32, 2], 3, q4_1_blocks())
}

#[test]
fn synthetic_file_metadata() {
    let g = open_bytes("meta", &valid_writer().build()).expect("valid file opens");
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture").expect("arch"), "llama");
    assert_eq!(g.get_u64("llama.block_count").expect("block_count"), 2);
    assert_eq!(
        g.get_f64("llama.rope.freq_base").expect("freq_base"),
        10000.0
    );
    assert_eq!(g.get("flag"), Some(&GgufValue::Bool(true)));
    assert_eq!(g.get("neg").and_then(GgufValue::as_u64), None);
    let list: Vec<&str> = g
        .get("list")
        .and_then(GgufValue::as_array)
        .expect("array")
        .iter()
        .filter_map(GgufValue::as_str)
        .collect();
    assert_eq!(list, ["a", "bc"]);
    assert_eq!(g.tensors().len(), 6);
    let info = g.tensor_info("a.f32").expect("a.f32");
    assert_eq!(info.dims, [3, 2]);
    assert_eq!(info.shape(), [2, 3]);
    assert_eq!(info.type_name(), "F32");
    assert_eq!(g.tensor_info("f.q4_1").expect("f").type_name(), "Q4_1");

    // Missing keys and wrong types are errors naming the key.
    for (result, key) in [
        (g.get_u64("nope").map(|_| ()), "nope"),
        (
            g.get_u64("general.architecture").map(|_| ()),
            "general.architecture",
        ),
        (
            g.get_str("llama.block_count").map(|_| ()),
            "llama.block_count",
        ),
        (g.get_f64("flag").map(|_| ()), "flag"),
    ] {
        match result {
            Err(ModelError::Gguf { reason, .. }) => assert!(reason.contains(key), "{reason}"),
            other => panic!("expected an error naming {key}, got {other:?}"),
        }
    }
}

#[test]
fn synthetic_file_dequantizes_to_hand_computed_values() {
    let g = open_bytes("dequant", &valid_writer().build()).expect("valid file opens");
    let t = |name: &str| g.tensor_f32(name).unwrap_or_else(|e| panic!("{name}: {e}"));

    assert_eq!(t("a.f32"), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    assert_eq!(t("b.f16"), (vec![4], vec![1.0, -2.5, 0.5, 65504.0]));
    assert_eq!(t("c.bf16"), (vec![2], vec![1.0, -3.0]));

    let q8: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
    assert_eq!(t("d.q8_0"), (vec![32], q8));

    let mut q4_0 = vec![0.0; 32];
    for j in 0..16 {
        q4_0[j] = 2.0 * (j as f32 - 8.0);
        q4_0[j + 16] = 2.0 * (7.0 - j as f32);
    }
    assert_eq!(t("e.q4_0"), (vec![32], q4_0));

    let mut q4_1 = vec![0.0; 64];
    for j in 0..16 {
        q4_1[j] = 0.25 * j as f32 - 1.0;
        q4_1[j + 16] = 0.25 * ((3 * j) % 16) as f32 - 1.0;
        q4_1[32 + j] = 15.5;
        q4_1[48 + j] = 0.5;
    }
    assert_eq!(t("f.q4_1"), (vec![2, 32], q4_1));
    // Spot-check a few by hand: element 17 is the high nibble of byte 1 (3) -> 0.75 - 1.
    assert_eq!(t("f.q4_1").1[17], -0.25);
    assert_eq!(t("e.q4_0").1[0], -16.0);
}

/// Q4_K with d = 1, dmin = 0.5, every `qs` byte 0x31 (low nibble 1, high nibble 3), and scales
/// packed by hand: sub-block scales [1, 2, 3, 4, 21, 6, 7, 8], minimums [0, 1, 2, 3, 1, 2, 3, 4]
/// (scale 4 gets its high bits, 16, from the top bits of byte 0).
#[test]
fn q4_k_super_block_matches_hand_computed_values() {
    let mut b = f16_bits(F16_ONE).to_vec();
    b.extend_from_slice(&f16_bits(F16_HALF));
    b.extend_from_slice(&[0x41, 2, 3, 4, 0, 1, 2, 3, 0x15, 0x26, 0x37, 0x48]);
    b.extend([0x31; 128]);
    let g =
        open_bytes("q4k", &GgufWriter::new().tensor("k", &[256], 12, b).build()).expect("opens");
    let (shape, w) = g.tensor_f32("k").expect("decodes");
    assert_eq!(shape, [256]);
    // Sub-block k (32 elements): even k uses the low nibble (1), odd k the high one (3);
    // w = d * scale * q - dmin * min.
    let per_sub_block = [1.0, 5.5, 2.0, 10.5, 20.5, 17.0, 5.5, 22.0];
    for (i, v) in w.iter().enumerate() {
        assert_eq!(*v, per_sub_block[i / 32], "element {i}");
    }
}

/// Q6_K with d = 0.5, scales s_i = i - 8, `ql` bytes 0x21 and `qh` bytes 0xE4, so that the four
/// 32-element quarters of each half get q = 1, 17, 34, 50 (minus 32: -31, -15, 2, 18), and
/// element e uses scale e / 16.
#[test]
fn q6_k_super_block_matches_hand_computed_values() {
    let mut b = vec![0x21; 128];
    b.extend([0xE4; 64]);
    b.extend((0..16).map(|i| (i as i8 - 8) as u8));
    b.extend_from_slice(&f16_bits(F16_HALF));
    let g =
        open_bytes("q6k", &GgufWriter::new().tensor("k", &[256], 14, b).build()).expect("opens");
    let (_, w) = g.tensor_f32("k").expect("decodes");
    let q = [-31.0, -15.0, 2.0, 18.0];
    for (e, v) in w.iter().enumerate() {
        let expected = 0.5 * (e / 16) as f32 - 4.0;
        let expected = expected * q[(e % 128) / 32];
        assert_eq!(*v, expected, "element {e}");
    }
}

/// Pseudo-random bytes (a 32-bit LCG), reproducible in the Python script that computed the
/// reference values below.
fn lcg_bytes(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// A pseudo-random two-block tensor of one quantized type, with reference results.
struct RefCase {
    ty: u32,
    block_elems: u64,
    block_bytes: usize,
    /// (byte offset in the block, f16 bits) of each scale field overwritten, so that the
    /// scales are finite and moderate.
    f16_fields: &'static [(usize, u16)],
    sum: f64,
    sum_sq: f64,
    /// (index, value) samples.
    samples: &'static [(usize, f32)],
}

// Generated by a Python script with llama.cpp's `gguf-py` reference dequantizers
// (`gguf.quants.dequantize`, gguf 0.19.0; Q8_K, which gguf-py lacks, as `d * q` with numpy) on
// the blocks `lcg_bytes(ty * 7919 + 1, 2 * block_bytes)` with the fields below overwritten
// (for Q8_K, the f32 scale set to 0.125). d = 0x2E66 (about 0.1), min = 0xB4CD (about -0.3).
// The literals are the exact decimal expansions of the f32 results, compared bit for bit.
#[allow(clippy::excessive_precision)]
const REFERENCE_CASES: &[RefCase] = &[
    // Q4_0
    RefCase {
        ty: 2,
        block_elems: 32,
        block_bytes: 18,
        f16_fields: &[(0, 0x2E66)],
        sum: -3.399169921875,
        sum_sq: 13.633340656757355,
        samples: &[
            (0, 0.0999755859375),
            (1, 0.0),
            (17, 0.6998291015625),
            (31, -0.6998291015625),
            (33, -0.7998046875),
            (63, -0.7998046875),
        ],
    },
    // Q4_1
    RefCase {
        ty: 3,
        block_elems: 32,
        block_bytes: 20,
        f16_fields: &[(0, 0x2E66), (2, 0xB4CD)],
        sum: 28.185302734375,
        sum_sq: 25.06087327003479,
        samples: &[
            (0, 0.69970703125),
            (1, 0.899658203125),
            (17, 0.7996826171875),
            (31, 0.899658203125),
            (33, -0.300048828125),
            (63, 0.499755859375),
        ],
    },
    // Q5_0
    RefCase {
        ty: 6,
        block_elems: 32,
        block_bytes: 22,
        f16_fields: &[(0, 0x2E66)],
        sum: -15.396240234375,
        sum_sq: 53.393919199705124,
        samples: &[
            (0, 0.0999755859375),
            (1, 0.4998779296875),
            (17, 0.999755859375),
            (31, -1.0997314453125),
            (33, 0.8997802734375),
            (63, -1.399658203125),
        ],
    },
    // Q5_1
    RefCase {
        ty: 7,
        block_elems: 32,
        block_bytes: 24,
        f16_fields: &[(0, 0x2E66), (2, 0xB4CD)],
        sum: 78.4730224609375,
        sum_sq: 159.89273001253605,
        samples: &[
            (0, 1.1995849609375),
            (1, 2.69921875),
            (17, 1.49951171875),
            (31, 1.8994140625),
            (33, -0.10009765625),
            (63, 0.499755859375),
        ],
    },
    // Q8_0
    RefCase {
        ty: 8,
        block_elems: 32,
        block_bytes: 34,
        f16_fields: &[(0, 0x2E66)],
        sum: -6.0985107421875,
        sum_sq: 3229.8123654574156,
        samples: &[
            (0, 3.59912109375),
            (1, -5.99853515625),
            (17, -3.4991455078125),
            (31, 3.9990234375),
            (33, 10.8973388671875),
            (63, 2.4993896484375),
        ],
    },
    // Q2_K
    RefCase {
        ty: 10,
        block_elems: 256,
        block_bytes: 84,
        f16_fields: &[(80, 0x2E66), (82, 0xB4CD)],
        sum: 1829.1397705078125,
        sum_sq: 8337.883199378848,
        samples: &[
            (0, 4.20068359375),
            (1, 6.800048828125),
            (17, 1.7999267578125),
            (31, 0.900146484375),
            (33, 4.999755859375),
            (100, 3.500244140625),
            (255, 2.999267578125),
            (511, 5.099853515625),
        ],
    },
    // Q3_K
    RefCase {
        ty: 11,
        block_elems: 256,
        block_bytes: 110,
        f16_fields: &[(108, 0x2E66)],
        sum: -127.2689208984375,
        sum_sq: 11447.998109444976,
        samples: &[
            (0, 8.39794921875),
            (1, -2.0994873046875),
            (17, 0.0),
            (31, -5.5986328125),
            (33, -5.5986328125),
            (100, -0.199951171875),
            (255, 0.599853515625),
            (511, -2.3994140625),
        ],
    },
    // Q4_K
    RefCase {
        ty: 12,
        block_elems: 256,
        block_bytes: 144,
        f16_fields: &[(0, 0x2E66), (2, 0xB4CD)],
        sum: 15186.05224609375,
        sum_sq: 697386.8463946581,
        samples: &[
            (0, 16.2021484375),
            (1, 15.80224609375),
            (17, 16.402099609375),
            (31, 15.9022216796875),
            (33, 34.19482421875),
            (100, 6.0985107421875),
            (255, 39.1964111328125),
            (511, 14.296630859375),
        ],
    },
    // Q5_K
    RefCase {
        ty: 13,
        block_elems: 256,
        block_bytes: 176,
        f16_fields: &[(0, 0x2E66), (2, 0xB4CD)],
        sum: 35599.08154296875,
        sum_sq: 3950958.3966550827,
        samples: &[
            (0, 16.20263671875),
            (1, 16.20263671875),
            (17, 16.20263671875),
            (31, 16.20263671875),
            (33, 93.0784912109375),
            (100, 3.89990234375),
            (255, 14.702392578125),
            (511, 162.560546875),
        ],
    },
    // Q6_K
    RefCase {
        ty: 14,
        block_elems: 256,
        block_bytes: 210,
        f16_fields: &[(208, 0x2E66)],
        sum: -3860.9571533203125,
        sum_sq: 7662719.017332718,
        samples: &[
            (0, 51.9873046875),
            (1, 43.9892578125),
            (17, 18.995361328125),
            (31, 47.4884033203125),
            (33, -284.930419921875),
            (100, 156.161865234375),
            (255, 10.3974609375),
            (511, 249.339111328125),
        ],
    },
    // Q8_K
    RefCase {
        ty: 15,
        block_elems: 256,
        block_bytes: 292,
        f16_fields: &[],
        sum: -29.125,
        sum_sq: 41380.671875,
        samples: &[
            (0, 7.75),
            (1, 6.5),
            (17, -8.75),
            (31, 9.375),
            (33, 13.75),
            (100, 3.125),
            (255, 13.0),
            (511, -2.375),
        ],
    },
];

/// Every supported quantized type on two pseudo-random blocks against the reference values:
/// the sum, the sum of squares, and a few elements (exactly: the operations are the same, in
/// `f32`, in the same order).
#[test]
fn quantized_types_match_reference_on_random_blocks() {
    for case in REFERENCE_CASES {
        let mut data = lcg_bytes(case.ty * 7919 + 1, 2 * case.block_bytes);
        for block in data.chunks_mut(case.block_bytes) {
            for &(at, bits) in case.f16_fields {
                block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            }
            if case.ty == 15 {
                // Q8_K has an f32 scale.
                block[..4].copy_from_slice(&0.125f32.to_le_bytes());
            }
        }
        let bytes = GgufWriter::new()
            .tensor("t", &[case.block_elems * 2], case.ty, data)
            .build();
        let g = open_bytes(&format!("ref{}", case.ty), &bytes).expect("opens");
        let (_, w) = g
            .tensor_f32("t")
            .unwrap_or_else(|e| panic!("type {}: {e}", case.ty));
        let sum: f64 = w.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = w.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!(
            (sum - case.sum).abs() <= 1e-9 * case.sum_sq.max(1.0),
            "type {}: sum {sum} vs {}",
            case.ty,
            case.sum
        );
        assert!(
            (sum_sq - case.sum_sq).abs() <= 1e-9 * case.sum_sq.max(1.0),
            "type {}: sum_sq {sum_sq} vs {}",
            case.ty,
            case.sum_sq
        );
        for &(i, v) in case.samples {
            assert_eq!(w[i], v, "type {} element {i}", case.ty);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed files
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_files_are_errors_at_every_cut() {
    let bytes = valid_writer().build();
    let f = TempFile::new("trunc", b"");
    for cut in 0..bytes.len() {
        std::fs::write(f.path(), &bytes[..cut]).expect("write");
        match GgufFile::open(f.path()) {
            Err(ModelError::Gguf { .. }) => {}
            Err(other) => panic!("cut at {cut}: unexpected error kind {other:?}"),
            Ok(_) => panic!("cut at {cut} of {}: truncated file opened", bytes.len()),
        }
    }
    std::fs::write(f.path(), &bytes).expect("write");
    assert!(GgufFile::open(f.path()).is_ok());
}

#[test]
fn bad_magic_is_an_error() {
    let mut w = valid_writer();
    w.magic = *b"GGML";
    let reason = gguf_reason(open_bytes("magic", &w.build()));
    assert!(reason.contains("magic"), "{reason}");
}

#[test]
fn unsupported_versions_are_errors() {
    for version in [0, 1, 4, 99, 0x0300_0000] {
        let mut w = valid_writer();
        w.version = version;
        let reason = gguf_reason(open_bytes(&format!("version{version}"), &w.build()));
        assert!(reason.contains("version"), "{version}: {reason}");
    }
    let mut w = valid_writer();
    w.version = 2;
    assert_eq!(
        open_bytes("version2", &w.build())
            .expect("v2 opens")
            .version(),
        2
    );
}

#[test]
fn unsupported_tensor_types_are_named() {
    let w = GgufWriter::new()
        .tensor("weird.weight", &[32], 99, vec![0; 64])
        .tensor("iq.weight", &[256], 16, vec![0; 66])
        .tensor("ok.weight", &[32], 8, q8_0_block());
    let g = open_bytes("types", &w.build()).expect("a file with unknown types still opens");
    match g.tensor_f32("weird.weight") {
        Err(ModelError::UnsupportedDtype { tensor, dtype, .. }) => {
            assert_eq!(tensor, "weird.weight");
            assert!(dtype.contains("99"), "{dtype}");
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
    match g.tensor_f32("iq.weight") {
        Err(ModelError::UnsupportedDtype { tensor, dtype, .. }) => {
            assert_eq!(tensor, "iq.weight");
            assert!(dtype.contains("IQ2_XXS"), "{dtype}");
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
    assert_eq!(
        g.tensor_info("weird.weight").expect("info").type_name(),
        "type 99"
    );
    assert!(g.tensor_f32("ok.weight").is_ok());
}

#[test]
fn tensor_data_past_end_of_file_is_an_error() {
    let w = GgufWriter::new()
        .tensor("a", &[32], 8, q8_0_block())
        .tensor_at("far", &[32], 8, Vec::new(), 1 << 20);
    let reason = gguf_reason(open_bytes("past", &w.build()));
    assert!(
        reason.contains("far") && reason.contains("end of the file"),
        "{reason}"
    );

    // An offset so large that offset + size overflows.
    let w = GgufWriter::new().tensor_at("huge", &[32], 8, Vec::new(), u64::MAX - 31);
    let reason = gguf_reason(open_bytes("overflow", &w.build()));
    assert!(reason.contains("huge"), "{reason}");

    // Dimensions whose product overflows.
    let w = GgufWriter::new().tensor("big", &[1 << 40, 1 << 40], 0, Vec::new());
    let reason = gguf_reason(open_bytes("dims", &w.build()));
    assert!(reason.contains("big"), "{reason}");
}

#[test]
fn missing_tensor_is_named() {
    let g = open_bytes("missing", &valid_writer().build()).expect("opens");
    match g.tensor_f32("blk.0.attn_q.weight") {
        Err(ModelError::MissingTensor { tensor, .. }) => assert_eq!(tensor, "blk.0.attn_q.weight"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn string_longer_than_file_is_an_error() {
    // A metadata string value claiming 2^40 bytes.
    let mut value = (1u64 << 40).to_le_bytes().to_vec();
    value.extend_from_slice(b"short");
    let w = GgufWriter::new().kv("s", 8, value);
    let reason = gguf_reason(open_bytes("strlen", &w.build()));
    assert!(reason.contains("length"), "{reason}");

    // A key length of u64::MAX.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 16]);
    gguf_reason(open_bytes("keylen", &bytes));

    // An array claiming 2^60 elements, and absurd tensor / metadata counts.
    let mut arr = 0u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 60).to_le_bytes());
    gguf_reason(open_bytes(
        "arrlen",
        &GgufWriter::new().kv("a", 9, arr).build(),
    ));
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    gguf_reason(open_bytes("counts", &bytes));
}

#[test]
fn bad_alignment_and_value_types_are_errors() {
    for alignment in [0u32, 3, 24] {
        let w = valid_writer().kv_u32("general.alignment", alignment);
        let reason = gguf_reason(open_bytes(&format!("align{alignment}"), &w.build()));
        assert!(reason.contains("alignment"), "{reason}");
    }
    // A valid non-default alignment is honoured.
    let mut w = valid_writer().kv_u32("general.alignment", 64);
    w.alignment = 64;
    let g = open_bytes("align64", &w.build()).expect("opens");
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor_f32("d.q8_0").expect("q8").1[0], -8.0);

    let reason = gguf_reason(open_bytes(
        "vtype",
        &GgufWriter::new().kv("x", 13, vec![0; 8]).build(),
    ));
    assert!(reason.contains("type 13"), "{reason}");
    let w = GgufWriter::new().kv_u32("k", 1).kv_u32("k", 2);
    assert!(gguf_reason(open_bytes("dupkey", &w.build())).contains("duplicate"));
    // Deeply nested arrays are refused rather than recursed into.
    let mut nested = Vec::new();
    for _ in 0..64 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    nested.extend_from_slice(&0u32.to_le_bytes());
    nested.extend_from_slice(&0u64.to_le_bytes());
    let reason = gguf_reason(open_bytes(
        "deep",
        &GgufWriter::new().kv("deep", 9, nested).build(),
    ));
    assert!(reason.contains("nested"), "{reason}");
}

#[test]
fn empty_and_missing_files_are_errors() {
    gguf_reason(open_bytes("empty", b""));
    match GgufFile::open("/nonexistent/focusllm/model.gguf") {
        Err(ModelError::Io { .. }) => {}
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn non_bpe_tokenizers_are_refused_by_name() {
    let w = GgufWriter::new()
        .kv_str("tokenizer.ggml.model", "llama")
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b"]);
    let g = open_bytes("tokmodel", &w.build()).expect("opens");
    match tokenizer_from_gguf(&g) {
        Err(ModelError::Tokenizer(msg)) => assert!(msg.contains("llama"), "{msg}"),
        other => panic!("expected a tokenizer error, got {:?}", other.map(|_| ())),
    }
    let w = GgufWriter::new()
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", "mystery-pre")
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"])
        .kv_str_array("tokenizer.ggml.merges", &["a b"]);
    let g = open_bytes("tokpre", &w.build()).expect("opens");
    match tokenizer_from_gguf(&g) {
        Err(ModelError::Tokenizer(msg)) => assert!(msg.contains("mystery-pre"), "{msg}"),
        other => panic!("expected a tokenizer error, got {:?}", other.map(|_| ())),
    }
    // A merge whose parts are not in the vocabulary.
    let w = GgufWriter::new()
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b"])
        .kv_str_array("tokenizer.ggml.merges", &["a b"]);
    let g = open_bytes("tokmerge", &w.build()).expect("opens");
    assert!(matches!(
        tokenizer_from_gguf(&g),
        Err(ModelError::Tokenizer(_))
    ));
}

#[test]
fn tiny_bpe_tokenizer_from_synthetic_metadata() {
    // Byte-level images: "Ġ" is a space. Token 0 is a control token.
    let w = GgufWriter::new()
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", "smollm")
        .kv_str_array(
            "tokenizer.ggml.tokens",
            &["<s>", "a", "b", "Ġ", "1", "ab", "Ġab"],
        )
        .kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"])
        .kv("tokenizer.ggml.token_type", 9, {
            let mut b = 5u32.to_le_bytes().to_vec();
            b.extend_from_slice(&7u64.to_le_bytes());
            for t in [3i32, 1, 1, 1, 1, 1, 1] {
                b.extend_from_slice(&t.to_le_bytes());
            }
            b
        })
        .kv_u32("tokenizer.ggml.bos_token_id", 0)
        .kv_str("tokenizer.chat_template", "{{ x }}");
    let g = open_bytes("tiny-tok", &w.build()).expect("opens");
    let tok = tokenizer_from_gguf(&g).expect("builds");
    assert_eq!(tok.bos_id, Some(0));
    assert_eq!(tok.eos_id, None);
    assert_eq!(tok.chat_template.as_deref(), Some("{{ x }}"));
    let enc = tok.tokenizer.encode("<s>ab ab11", true).expect("encodes");
    assert_eq!(enc.get_ids(), [0, 5, 6, 4, 4]);
    assert_eq!(
        tok.tokenizer.decode(enc.get_ids(), false).expect("decodes"),
        "<s>ab ab11"
    );
    assert_eq!(
        tok.tokenizer.decode(enc.get_ids(), true).expect("decodes"),
        "ab ab11"
    );
}

// ---------------------------------------------------------------------------------------------
// Q/K row permutation
// ---------------------------------------------------------------------------------------------

/// llama.cpp's permutation (convert_hf_to_gguf.py `LlamaModel.permute`):
/// `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn permute_qk_rows(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..half {
                // Source index (h, j, i) in [n_head, 2, half]; destination (h, i, j) in [n_head, half, 2].
                let src = h * head_dim + j * half + i;
                let dst = h * head_dim + i * 2 + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_qk_rows_inverts_llama_cpp_permutation() {
    // One head of dim 4, one column: HF rows [0, 1, 2, 3] are stored as [0, 2, 1, 3].
    assert_eq!(
        permute_qk_rows(&[0.0, 1.0, 2.0, 3.0], 4, 1, 1),
        [0.0, 2.0, 1.0, 3.0]
    );
    assert_eq!(
        unpermute_qk_rows(&[0.0, 2.0, 1.0, 3.0], 4, 1, 1),
        [0.0, 1.0, 2.0, 3.0]
    );
    for (rows, cols, heads) in [(12, 3, 3), (576, 5, 9), (192, 7, 3), (16, 2, 2)] {
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let permuted = permute_qk_rows(&w, rows, cols, heads);
        assert_ne!(
            permuted, w,
            "{rows}x{cols}/{heads}: the permutation should move rows"
        );
        assert_eq!(
            unpermute_qk_rows(&permuted, rows, cols, heads),
            w,
            "{rows}x{cols}/{heads}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2 file
// ---------------------------------------------------------------------------------------------

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FOCUSLLM_MODEL").map(PathBuf::from)
        && p.extension().is_some_and(|e| e == "gguf")
    {
        return p;
    }
    let cache = match std::env::var_os("FOCUSLLM_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/focusllm"),
    };
    cache.join(MODEL_FILE)
}

/// The real model, or `None` (after printing `SKIP`) when it is absent outside CI.
fn real_model() -> Option<GgufFile> {
    let path = model_path();
    if !path.is_file() {
        let msg = format!(
            "{} not found (set FOCUSLLM_MODEL or FOCUSLLM_HOME)",
            path.display()
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; the model is required under CI");
        }
        eprintln!("SKIP: {msg}");
        return None;
    }
    Some(GgufFile::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())))
}

#[test]
fn real_file_tokenizer_matches_golden_ids() {
    let Some(g) = real_model() else { return };
    let tok = tokenizer_from_gguf(&g).expect("tokenizer builds");
    assert_eq!(tok.bos_id, Some(1));
    assert_eq!(tok.eos_id, Some(2));
    assert!(!tok.add_bos);
    assert!(
        tok.chat_template
            .as_deref()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/smollm2/tokenizer_cases.json"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")),
    )
    .expect("json");
    let cases = json["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        for add_special in [false, true] {
            let enc = tok.tokenizer.encode(text, add_special).expect("encodes");
            assert_eq!(
                enc.get_ids(),
                expected.as_slice(),
                "{text:?} (add_special_tokens = {add_special})"
            );
        }
        assert_eq!(
            tok.tokenizer.decode(&expected, false).expect("decodes"),
            text
        );
    }
}

#[test]
// The literals are the exact decimal expansions of the f32 reference values.
#[allow(clippy::excessive_precision)]
fn real_file_metadata_and_embeddings() {
    let Some(g) = real_model() else { return };
    assert_eq!(g.get_str("general.architecture").expect("arch"), "llama");
    assert_eq!(g.get_u64("llama.block_count").expect("blocks"), 30);
    assert_eq!(g.get_u64("llama.embedding_length").expect("hidden"), 576);
    assert_eq!(g.get_u64("llama.attention.head_count").expect("heads"), 9);
    assert_eq!(
        g.get_u64("llama.attention.head_count_kv")
            .expect("kv heads"),
        3
    );
    assert_eq!(g.get_f64("llama.rope.freq_base").expect("rope"), 100000.0);
    assert!(g.tensors().len() >= 210, "{} tensors", g.tensors().len());
    let embd = g.tensor_info("token_embd.weight").expect("token_embd");
    assert_eq!(embd.type_name(), "Q8_0");
    assert_eq!(embd.shape(), [49152, 576]);

    let (shape, w) = g
        .tensor_f32("token_embd.weight")
        .expect("token_embd decodes");
    assert_eq!(shape, [49152, 576]);
    assert_eq!(w.len(), 49152 * 576);
    assert!(w.iter().all(|v| v.is_finite()));
    // Reference values from gguf-py (`gguf.quants.dequantize`) on the same file.
    let sum: f64 = w.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - -15353.04449415207).abs() < 1e-3, "sum {sum}");
    assert_eq!(w[0], -0.10654449462890625);
    assert_eq!(w[1], 0.032978057861328125);
    assert_eq!(w[32], -0.09348678588867188);
    assert_eq!(w[w.len() - 1], -0.0417022705078125);

    let (shape, q) = g.tensor_f32("blk.0.attn_q.weight").expect("attn_q decodes");
    assert_eq!(shape, [576, 576]);
    let sum: f64 = q.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - 59.22322082519531).abs() < 1e-6, "sum {sum}");
    assert_eq!(q[0], -0.0963134765625);
    assert_eq!(q[32], -0.34619140625);

    let (shape, norm) = g.tensor_f32("output_norm.weight").expect("norm decodes");
    assert_eq!(shape, [576]);
    assert!(norm.iter().all(|v| v.is_finite()));
}

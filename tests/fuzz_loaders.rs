//! Structure-aware, seeded fuzzing of every loader: HF safetensors (single file and sharded),
//! `config.json`, GGUF (model and tokenizer metadata), candidate adapters and `tokenizer.json`.
//!
//! Each loader gets valid seeds built from the tiny official model C (a GGUF v3 conversion of it
//! is written here, with the tokenizer metadata that `tokenizer_from_gguf` reads), checked first
//! to load and run unmutated, so that the harness cannot pass vacuously. Each case then applies a
//! few mutations chosen by a small seeded PRNG (splitmix64) from its (seed, loader, index) alone:
//! edits of the format's structure (safetensors header shapes, dtypes, offsets and names; config
//! fields; GGUF counts, string and array lengths, dims, type ids, offsets, alignment, metadata
//! value types; adapter names, shapes and metadata; tokenizer.json nodes), and raw truncations,
//! bit flips and byte swaps. Every case must end in `Ok` or a typed error: a panic (caught with
//! `catch_unwind`), a single allocation above [`HUGE_ALLOCATION`] bytes (the loaders must check
//! counts against the bytes that exist before allocating) or a case running longer than the hang
//! limit fails the test. A case that loads is run too (a short prefill), since a loaded but
//! nonsensical model must not crash later either.
//!
//! Environment:
//! - `FOCUSLLM_FUZZ_CASES`: total cases over all loaders (default 2000), split by fixed weights.
//! - `FOCUSLLM_FUZZ_SEED`: the run's seed (decimal or `0x` hex; default fixed, so CI is stable).
//! - `FOCUSLLM_FUZZ_CASE=<loader>:<index>`: run only that case, loudly (panic message and error
//!   printed, its scratch directory kept).
//! - `FOCUSLLM_FUZZ_TRACE=1`: print every case id before running it (to find an abort).
//! - `FOCUSLLM_FUZZ_HANG_SECS`: the hang limit per case (default 60).
//!
//! Each loader's test prints `fuzz-summary` and `fuzz-outcome` lines (seen with `--nocapture`),
//! which `scripts/fuzz-campaign.sh` adds up.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{Debug, Display, Write as _};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use focusllm::core::{FocusConfig, FocusEngine};
use focusllm::models::config::LlamaConfig;
use focusllm::models::gguf::{GgufFile, dequant};
use focusllm::models::{
    AdapterInfo, CandidateAdapter, LlamaModel, ModelError, Tokenizer, config_from_gguf, load_model,
};
use serde_json::{Map, Value, json};

type B = focusllm::backends::Cpu;

// =============================================================================================
// Allocation guard
// =============================================================================================

/// Any single allocation above this size while a case runs fails the case: the seeds are a few
/// MB, so only a count or size read from the file, unchecked, can ask for that much.
const HUGE_ALLOCATION: usize = 256 << 20;
/// No case is running on this thread.
const IDLE: u64 = u64::MAX;

thread_local! {
    /// The case this thread runs, `target << 48 | index` (`IDLE`: none).
    static RUNNING: Cell<u64> = const { Cell::new(IDLE) };
    /// The largest allocation above `HUGE_ALLOCATION` requested by the running case.
    static HUGE: Cell<usize> = const { Cell::new(0) };
    /// Whether a panic on this thread is recorded quietly (inside a case) or reported as usual.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The message of the last quiet panic.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// mimalloc (as in the other tests), noting huge requests made inside a case, and naming the case
/// when an allocation fails (the process then aborts).
struct GuardedAlloc;

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// A fixed buffer to format a message in without allocating.
struct StackText {
    buf: [u8; 200],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl GuardedAlloc {
    fn note(size: usize) {
        if size > HUGE_ALLOCATION {
            let _ = RUNNING.try_with(|running| {
                if running.get() != IDLE {
                    let _ = HUGE.try_with(|huge| huge.set(huge.get().max(size)));
                }
            });
        }
    }

    fn failed(size: usize) {
        let case = RUNNING.try_with(Cell::get).unwrap_or(IDLE);
        let mut text = StackText {
            buf: [0; 200],
            len: 0,
        };
        let _ = if case == IDLE {
            writeln!(
                text,
                "fuzz_loaders: an allocation of {size} bytes failed outside a case"
            )
        } else {
            writeln!(
                text,
                "fuzz_loaders: case {}:{} requested {size} bytes, which failed (abort)",
                TARGET_NAMES[(case >> 48) as usize % TARGET_NAMES.len()],
                case & ((1 << 48) - 1)
            )
        };
        let _ = std::io::stderr().write_all(&text.buf[..text.len]);
    }
}

// SAFETY: every call is forwarded unchanged to mimalloc; the bookkeeping only reads and writes
// const-initialised thread-locals (no allocation, no unwinding).
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if p.is_null() {
            Self::failed(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if p.is_null() {
            Self::failed(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if p.is_null() {
            Self::failed(new_size);
        }
        p
    }
}

// =============================================================================================
// Settings, targets, PRNG
// =============================================================================================

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Safetensors,
    Sharded,
    Config,
    Gguf,
    GgufTokenizer,
    Adapter,
    TokenizerJson,
}

const TARGETS: [Target; 7] = [
    Target::Safetensors,
    Target::Sharded,
    Target::Config,
    Target::Gguf,
    Target::GgufTokenizer,
    Target::Adapter,
    Target::TokenizerJson,
];
const TARGET_NAMES: [&str; 7] = [
    "safetensors",
    "sharded",
    "config",
    "gguf",
    "gguf-tokenizer",
    "adapter",
    "tokenizer-json",
];
/// Shares of the total number of cases, out of `WEIGHT_SUM`.
const WEIGHTS: [u64; 7] = [4, 2, 4, 4, 3, 2, 1];
const WEIGHT_SUM: u64 = 20;
const TEST_NAMES: [&str; 7] = [
    "fuzz_safetensors",
    "fuzz_sharded_safetensors",
    "fuzz_config_json",
    "fuzz_gguf_model",
    "fuzz_gguf_tokenizer",
    "fuzz_candidate_adapter",
    "fuzz_tokenizer_json",
];

impl Target {
    fn name(self) -> &'static str {
        TARGET_NAMES[self as usize]
    }
}

struct Settings {
    seed: u64,
    total: u64,
    only: Option<(String, u64)>,
    trace: bool,
    hang: Duration,
}

const DEFAULT_SEED: u64 = 0xF0C5_11A4_5EED_0001;
const DEFAULT_CASES: u64 = 2000;

fn parse_u64(text: &str) -> Option<u64> {
    let t = text.trim().replace('_', "");
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, default: u64| match var(name) {
            None => default,
            Some(v) => parse_u64(&v).unwrap_or_else(|| panic!("{name}={v:?} is not a number")),
        };
        let only = var("FOCUSLLM_FUZZ_CASE").map(|v| {
            let (target, index) = v
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("FOCUSLLM_FUZZ_CASE={v:?}: expected <loader>:<index>"));
            assert!(
                TARGET_NAMES.contains(&target),
                "FOCUSLLM_FUZZ_CASE={v:?}: the loader is one of {TARGET_NAMES:?}"
            );
            let index =
                parse_u64(index).unwrap_or_else(|| panic!("FOCUSLLM_FUZZ_CASE={v:?}: bad index"));
            (target.to_string(), index)
        });
        Settings {
            seed: number("FOCUSLLM_FUZZ_SEED", DEFAULT_SEED),
            total: number("FOCUSLLM_FUZZ_CASES", DEFAULT_CASES),
            only,
            trace: var("FOCUSLLM_FUZZ_TRACE").is_some_and(|v| v != "0"),
            hang: Duration::from_secs(number("FOCUSLLM_FUZZ_HANG_SECS", 60).max(1)),
        }
    })
}

impl Settings {
    fn cases(&self, target: Target) -> u64 {
        (self.total * WEIGHTS[target as usize] / WEIGHT_SUM).max(1)
    }
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    /// The generator of one case: a function of the run's seed, the loader and the index only.
    fn for_case(seed: u64, target: Target, index: u64) -> Self {
        let mut rng = Rng(seed ^ (target as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
        rng.0 = rng.next() ^ index.wrapping_mul(0xE703_7ED1_A0B4_28DB);
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

// =============================================================================================
// Driver: panics, huge allocations, hangs
// =============================================================================================

/// How a case ended (a panic never gets here).
struct Verdict {
    ok: bool,
    label: String,
    detail: String,
}

impl Verdict {
    fn ok() -> Self {
        Self {
            ok: true,
            label: "ok".into(),
            detail: String::new(),
        }
    }

    /// A typed error at `stage`: the label names the error's variant.
    fn error(stage: &str, e: &(impl Debug + Display)) -> Self {
        let debug = format!("{e:?}");
        let variant: String = debug
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        Self {
            ok: false,
            label: format!("{stage}: {variant}"),
            detail: e.to_string(),
        }
    }
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".into()
    }
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.try_with(Cell::get).unwrap_or(false) {
                let at = info
                    .location()
                    .map(|l| format!(" (at {l})"))
                    .unwrap_or_default();
                let message = format!("{}{at}", payload_text(info.payload()));
                let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
}

/// Per target: when its running case started (ms since `epoch()`, plus one; 0: idle), and which.
static CASE_STARTED: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static CASE_INDEX: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// A thread that ends the process, naming the case, when a case runs past the hang limit.
fn start_watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        epoch();
        let limit = settings().hang.as_millis() as u64;
        let seed = settings().seed;
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let now = now_ms();
                for target in TARGETS {
                    let started = CASE_STARTED[target as usize].load(Ordering::Relaxed);
                    if started != 0 && now.saturating_sub(started) > limit {
                        let index = CASE_INDEX[target as usize].load(Ordering::Relaxed);
                        let _ = writeln!(
                            std::io::stderr(),
                            "fuzz_loaders: HANG: case {}:{index} (seed {seed:#x}) has run for more \
                             than {limit} ms; reproduce with FOCUSLLM_FUZZ_SEED={seed:#x} \
                             FOCUSLLM_FUZZ_CASE={}:{index}",
                            target.name(),
                            target.name()
                        );
                        std::process::exit(3);
                    }
                }
            }
        });
    });
}

/// Runs the unmutated seed (`case(None)`, which must succeed), then every case of `target`
/// (`case(Some(rng))`), and fails listing the cases that panicked or allocated hugely.
fn run_target(target: Target, mut case: impl FnMut(Option<&mut Rng>) -> Verdict) {
    install_panic_hook();
    start_watchdog();
    let s = settings();
    let name = target.name();
    let indices: Vec<u64> = match &s.only {
        Some((only, index)) if only == name => vec![*index],
        Some(_) => {
            println!("fuzz {name}: skipped (FOCUSLLM_FUZZ_CASE names another loader)");
            return;
        }
        None => (0..s.cases(target)).collect(),
    };
    let verbose = s.only.is_some();

    // The unmutated seed loads and runs: otherwise every case would be a trivial error.
    match catch_unwind(AssertUnwindSafe(|| case(None))) {
        Ok(v) if v.ok => {}
        Ok(v) => panic!(
            "fuzz {name}: the unmutated seed does not load and run: {} ({})",
            v.label, v.detail
        ),
        Err(p) => panic!(
            "fuzz {name}: the unmutated seed panicked: {}",
            payload_text(p.as_ref())
        ),
    }

    let t = target as usize;
    let started = Instant::now();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut typed) = (0u64, 0u64);
    let mut panics: Vec<(u64, String)> = Vec::new();
    let mut huge: Vec<(u64, usize)> = Vec::new();
    let mut slowest = (0u64, Duration::ZERO);
    for &index in &indices {
        if s.trace {
            let _ = writeln!(std::io::stderr(), "fuzz case {name}:{index}");
        }
        let mut rng = Rng::for_case(s.seed, target, index);
        RUNNING.with(|r| r.set(((t as u64) << 48) | index));
        HUGE.with(|h| h.set(0));
        LAST_PANIC.with(|p| p.borrow_mut().take());
        QUIET.with(|q| q.set(!verbose));
        CASE_INDEX[t].store(index, Ordering::Relaxed);
        CASE_STARTED[t].store(now_ms(), Ordering::Relaxed);
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| case(Some(&mut rng))));
        let took = t0.elapsed();
        CASE_STARTED[t].store(0, Ordering::Relaxed);
        QUIET.with(|q| q.set(false));
        RUNNING.with(|r| r.set(IDLE));
        let big = HUGE.with(Cell::get);
        if took > slowest.1 {
            slowest = (index, took);
        }
        if big > 0 {
            huge.push((index, big));
        }
        let label = match result {
            Ok(v) => {
                if verbose {
                    println!(
                        "fuzz case {name}:{index}: {} {}",
                        v.label,
                        if v.detail.is_empty() {
                            String::new()
                        } else {
                            format!("({})", v.detail)
                        }
                    );
                }
                if v.ok {
                    ok += 1;
                } else {
                    typed += 1;
                }
                v.label
            }
            Err(payload) => {
                let message = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| payload_text(payload.as_ref()));
                if verbose {
                    println!("fuzz case {name}:{index}: PANIC: {message}");
                }
                panics.push((index, message));
                "PANIC".to_string()
            }
        };
        *outcomes.entry(label).or_default() += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "fuzz-summary loader={name} seed={:#x} cases={} ok={ok} typed_error={typed} panic={} \
         huge_alloc={} seconds={seconds:.2} slowest={name}:{}({} ms)",
        s.seed,
        indices.len(),
        panics.len(),
        huge.len(),
        slowest.0,
        slowest.1.as_millis()
    );
    for (label, count) in &outcomes {
        println!("fuzz-outcome loader={name} count={count} outcome={label}");
    }
    if !panics.is_empty() || !huge.is_empty() {
        let mut msg = format!(
            "fuzz {name}: {} panics and {} huge allocations in {} cases (seed {:#x})\n",
            panics.len(),
            huge.len(),
            indices.len(),
            s.seed
        );
        for (index, message) in panics.iter().take(40) {
            let _ = writeln!(msg, "  panic in case {name}:{index}: {message}");
        }
        for (index, bytes) in huge.iter().take(40) {
            let _ = writeln!(
                msg,
                "  case {name}:{index} allocated {bytes} bytes at once (limit {HUGE_ALLOCATION})"
            );
        }
        let _ = writeln!(
            msg,
            "reproduce one with: FOCUSLLM_FUZZ_SEED={:#x} FOCUSLLM_FUZZ_CASE={name}:<index> \
             cargo test --release --test fuzz_loaders -- --exact {} --nocapture",
            s.seed, TEST_NAMES[t]
        );
        panic!("{msg}");
    }
}

// =============================================================================================
// Scratch directories and files
// =============================================================================================

/// A directory of one loader's cases, removed at the end (kept when one case is reproduced).
struct Scratch(PathBuf);

impl Scratch {
    fn new(target: Target) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "focusllm-fuzz-{}-{}",
            target.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if settings().only.is_some() {
            println!(
                "fuzz {}: scratch directory {}",
                target.name(),
                dir.display()
            );
        }
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn subdir(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if settings().only.is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn write_file(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("harness: {}: {e}", path.display()));
}

fn model_c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official/C")
}

// =============================================================================================
// What a loaded model and tokenizer must survive
// =============================================================================================

fn engine_config() -> FocusConfig {
    FocusConfig::default()
        .with_local_window(512)
        .with_chunk_size(700)
        .with_plain_threshold(Some(4096))
}

/// A short prefill: a loaded model, however odd, must give logits or a typed error.
fn forward(model: &LlamaModel<B>) -> Verdict {
    let engine = match FocusEngine::new(model, engine_config()) {
        Ok(engine) => engine,
        Err(e) => return Verdict::error("engine", &e),
    };
    let mut session = engine.session();
    match session.prefill(&[1, 5, 7]) {
        Ok(_) => Verdict::ok(),
        Err(e) => Verdict::error("forward", &e),
    }
}

const TEXT: &str = "Hello world! It's 12345 <|im_start|>user\nÉté 🎉 <user> the end\n\n  ";

/// Encodes and decodes a little text; errors are typed, panics are not allowed.
fn exercise_tokenizer(t: &Tokenizer) -> Verdict {
    let ids = match t.encode(TEXT) {
        Ok(ids) => ids,
        Err(e) => return Verdict::error("encode", &e),
    };
    if let Err(e) = t.decode(&ids) {
        return Verdict::error("decode", &e);
    }
    let vocab = t.vocab_size();
    let _ = t.decode(&[0, (vocab as u32).saturating_sub(1), vocab as u32]);
    let _ = t.chat_prompt("hi");
    let _ = t.token_id("<|im_end|>");
    Verdict::ok()
}

// =============================================================================================
// Generic mutations: numbers, JSON trees, raw bytes
// =============================================================================================

fn interesting_u64(rng: &mut Rng, orig: u64) -> u64 {
    const FIXED: [u64; 28] = [
        0,
        1,
        2,
        3,
        4,
        7,
        8,
        16,
        31,
        32,
        63,
        64,
        95,
        96,
        97,
        255,
        256,
        511,
        512,
        513,
        4096,
        65536,
        1 << 31,
        1 << 32,
        1 << 40,
        1 << 62,
        1 << 63,
        u64::MAX,
    ];
    match rng.below(10) {
        0..=5 => rng.pick(&FIXED),
        6 => orig.wrapping_add(1),
        7 => orig.wrapping_sub(1),
        8 => orig ^ (1 << rng.below(64)),
        _ => match rng.below(4) {
            0 => orig.wrapping_mul(2),
            1 => orig / 2,
            2 => u64::MAX - orig,
            _ => rng.next(),
        },
    }
}

fn interesting_json(rng: &mut Rng, orig: &Value) -> Value {
    match rng.below(25) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(-1),
        3 => json!(2),
        4 => json!(1u64 << 31),
        5 => json!(1u64 << 32),
        6 => json!(1u64 << 40),
        7 => json!(1u64 << 53),
        8 => json!(1u64 << 63),
        9 => json!(u64::MAX),
        10 => json!(i64::MIN),
        11 => json!(1.5),
        12 => json!(-0.0),
        13 => json!(1e308),
        14 => json!(-1e308),
        15 => json!(5e-324),
        16 => json!(rng.pick(&[
            "", "NaN", "nan", "Infinity", "-inf", "96", "-1", "silu", "llama", "\u{0}", "é😀", "a",
            "(", "[", "\\"
        ])),
        17 => json!("x".repeat(rng.pick(&[300, 70_000]))),
        18 => Value::Null,
        19 => json!(rng.chance(1, 2)),
        20 => json!([]),
        21 => json!({}),
        22 => json!([orig.clone(), orig.clone()]),
        23 => json!({ "value": orig.clone() }),
        _ => {
            if let Some(u) = orig.as_u64() {
                json!(interesting_u64(rng, u))
            } else if let Some(f) = orig.as_f64() {
                json!(rng.pick(&[-f, f * 2.0, f / 1e30, f * 1e30, f.floor() + 0.5]))
            } else {
                Value::String(orig.to_string())
            }
        }
    }
}

#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A random walk from the root: at each level, stop (probability 1/3) or go into a random child.
fn random_path(rng: &mut Rng, root: &Value) -> Vec<Seg> {
    let mut path = Vec::new();
    let mut node = root;
    loop {
        let children = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || (!path.is_empty() && rng.chance(1, 3)) {
            return path;
        }
        match node {
            Value::Object(m) => {
                let (k, v) = m.iter().nth(rng.below(m.len())).expect("child");
                path.push(Seg::Key(k.clone()));
                node = v;
            }
            Value::Array(a) => {
                let i = rng.below(a.len());
                path.push(Seg::Index(i));
                node = &a[i];
            }
            _ => return path,
        }
    }
}

fn at_mut<'a>(mut node: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    for seg in path {
        node = match (node, seg) {
            (Value::Object(m), Seg::Key(k)) => m.get_mut(k)?,
            (Value::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// One mutation at a random node of a JSON document.
fn mutate_json_tree(rng: &mut Rng, root: &mut Value) {
    let path = random_path(rng, root);
    match rng.below(7) {
        0 | 1 => {
            if let Some(node) = at_mut(root, &path) {
                *node = interesting_json(rng, node);
            }
        }
        2 => {
            if let Some((last, parent)) = path.split_last()
                && let Some(parent) = at_mut(root, parent)
            {
                match (parent, last) {
                    (Value::Object(m), Seg::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), Seg::Index(i)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        3 => {
            if let Some(node) = at_mut(root, &path) {
                match node {
                    Value::Array(a) => {
                        let extra = match a.first() {
                            Some(first) if rng.chance(1, 2) => first.clone(),
                            _ => interesting_json(rng, &Value::Null),
                        };
                        let at = rng.below(a.len() + 1);
                        a.insert(at, extra);
                    }
                    Value::Object(m) => {
                        let key = rng.pick(&["", "type", "id", "vocab", "__fuzz", "content"]);
                        let v = interesting_json(rng, &Value::Null);
                        m.insert(key.to_string(), v);
                    }
                    other => *other = json!([other.clone()]),
                }
            }
        }
        4 => {
            if let Some(node) = at_mut(root, &path) {
                match node {
                    Value::String(s) => {
                        *s = match rng.below(6) {
                            0 => String::new(),
                            1 => format!("{s}{s}"),
                            2 => s.chars().rev().collect(),
                            3 => format!("{s}\u{fffd}"),
                            4 => format!("({s}"),
                            _ => s.to_uppercase(),
                        }
                    }
                    Value::Array(a) => match rng.below(3) {
                        0 => a.reverse(),
                        1 => a.truncate(rng.below(a.len() + 1)),
                        _ => a.clear(),
                    },
                    other => *other = interesting_json(rng, other),
                }
            }
        }
        5 => {
            // Copy another subtree over this one.
            let from = random_path(rng, root);
            let copied = at_mut(root, &from).cloned();
            if let (Some(copied), Some(node)) = (copied, at_mut(root, &path)) {
                *node = copied;
            }
        }
        _ => {
            if let Some(node) = at_mut(root, &path)
                && let Value::Object(m) = node
                && !m.is_empty()
            {
                // Rename a key.
                let k = m
                    .keys()
                    .nth(rng.below(m.len()))
                    .cloned()
                    .unwrap_or_default();
                if let Some(v) = m.remove(&k) {
                    let new = match rng.below(3) {
                        0 => format!("{k}_"),
                        1 => k.to_uppercase(),
                        _ => String::new(),
                    };
                    m.insert(new, v);
                }
            }
        }
    }
}

/// One raw mutation of `bytes`; three in four positions fall in the first `hot` bytes (the
/// header), when `hot > 0`.
fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>, hot: usize) {
    let len = bytes.len();
    let pos = |rng: &mut Rng| -> usize {
        if len == 0 {
            0
        } else if hot > 0 && rng.chance(3, 4) {
            rng.below(hot.min(len))
        } else {
            rng.below(len)
        }
    };
    match rng.below(9) {
        0 => {
            let cut = match rng.below(3) {
                0 => pos(rng),
                1 => len.saturating_sub(1 + rng.below(16)),
                _ => rng.below(len + 1),
            };
            bytes.truncate(cut);
        }
        1 => {
            for _ in 0..1 + rng.below(8) {
                if len > 0 {
                    let p = pos(rng);
                    bytes[p] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            if len > 1 {
                let (a, b) = (pos(rng), pos(rng));
                bytes.swap(a, b);
            }
        }
        3 => {
            if len > 0 {
                let p = pos(rng);
                bytes[p] = rng.pick(&[
                    0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'[', b']', b',', b':', b'-', b'9',
                    b'e', b'.', b'\\', b' ',
                ]);
            }
        }
        4 => {
            let chunk: Vec<u8> = match rng.below(8) {
                0 => b"NaN".to_vec(),
                1 => b"1e999".to_vec(),
                2 => b"-".to_vec(),
                3 => b"\"".to_vec(),
                4 => vec![0xff, 0xfe, 0xc3],
                5 => b"[".repeat(300),
                6 => vec![0; 8],
                _ => b"18446744073709551616".to_vec(),
            };
            let p = pos(rng).min(len);
            bytes.splice(p..p, chunk);
        }
        5 => {
            if len > 0 {
                let p = pos(rng);
                let end = (p + 1 + rng.below(64)).min(len);
                bytes.drain(p..end);
            }
        }
        6 => {
            if len > 0 {
                let p = pos(rng);
                let end = (p + 1 + rng.below(64)).min(len);
                let copy = bytes[p..end].to_vec();
                let at = pos(rng).min(bytes.len());
                bytes.splice(at..at, copy);
            }
        }
        7 => {
            if len >= 8 {
                let p = pos(rng).min(len - 8);
                let orig = u64::from_le_bytes(bytes[p..p + 8].try_into().expect("8 bytes"));
                let v = interesting_u64(rng, orig);
                bytes[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            if len >= 4 {
                let p = pos(rng).min(len - 4);
                let orig = u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes"));
                let v = interesting_u64(rng, orig.into()) as u32;
                bytes[p..p + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// 1 to 3 mutations, most often 1.
fn mutation_count(rng: &mut Rng) -> usize {
    1 + rng.below(3) * rng.below(2)
}

// =============================================================================================
// Safetensors
// =============================================================================================

/// A safetensors file as its JSON header and its data section.
#[derive(Clone)]
struct St {
    header: Map<String, Value>,
    /// A header that is no longer a JSON object (written as is).
    raw_header: Option<Vec<u8>>,
    data: Arc<Vec<u8>>,
}

impl St {
    fn parse(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header: Map<String, Value> =
            serde_json::from_slice(&bytes[8..8 + n]).expect("seed header");
        Self {
            header,
            raw_header: None,
            data: Arc::new(bytes[8 + n..].to_vec()),
        }
    }

    fn names(&self) -> Vec<String> {
        self.header
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect()
    }

    fn header_bytes(&self) -> Vec<u8> {
        let mut text = match &self.raw_header {
            Some(raw) => raw.clone(),
            None => serde_json::to_vec(&self.header).expect("header"),
        };
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        text
    }

    fn to_bytes(&self, len_override: Option<u64>) -> Vec<u8> {
        let header = self.header_bytes();
        let len = len_override.unwrap_or(header.len() as u64);
        let mut out = Vec::with_capacity(8 + header.len() + self.data.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.data);
        out
    }

    /// The tensors for which `keep` holds, packed again from offset 0 (metadata kept).
    fn subset(&self, keep: impl Fn(&str) -> bool) -> Self {
        let mut header = Map::new();
        let mut data = Vec::new();
        for (name, info) in &self.header {
            if name == "__metadata__" {
                header.insert(name.clone(), info.clone());
                continue;
            }
            if !keep(name) {
                continue;
            }
            let offsets: Vec<usize> = info["data_offsets"]
                .as_array()
                .expect("offsets")
                .iter()
                .map(|v| v.as_u64().expect("offset") as usize)
                .collect();
            let start = data.len();
            data.extend_from_slice(&self.data[offsets[0]..offsets[1]]);
            let mut info = info.clone();
            info["data_offsets"] = json!([start, data.len()]);
            header.insert(name.clone(), info);
        }
        Self {
            header,
            raw_header: None,
            data: Arc::new(data),
        }
    }

    /// Tensor `name` as `(shape, f32 values)` (seed files are all F32).
    fn tensor_f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let info = &self.header[name];
        assert_eq!(info["dtype"], "F32", "{name}");
        let shape = info["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("dim") as usize)
            .collect();
        let offsets: Vec<usize> = info["data_offsets"]
            .as_array()
            .expect("offsets")
            .iter()
            .map(|v| v.as_u64().expect("offset") as usize)
            .collect();
        let values = self.data[offsets[0]..offsets[1]]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (shape, values)
    }
}

const DTYPES: [&str; 23] = [
    "F32", "F16", "BF16", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "E8M0", "C64", "Q7", "f32", "", "F32 ",
];

const META_KEYS: [&str; 9] = [
    "format",
    "kind",
    "step_mode",
    "training",
    "base_model",
    "local_window",
    "chunk_size",
    "prompt_cap",
    "other",
];

fn interesting_meta_string(rng: &mut Rng) -> String {
    match rng.below(20) {
        0 => "x".repeat(5000),
        _ => rng
            .pick(&[
                "",
                "0",
                "1",
                "-1",
                "512",
                "18446744073709551615",
                "18446744073709551616",
                "1e3",
                "NaN",
                " 5",
                "５",
                "full",
                "low-rank",
                "low-rank 0",
                "low-rank 99999999999999999999",
                "frozen",
                "exact",
                "focusllm-candidates",
                "pt",
            ])
            .to_string(),
    }
}

/// A new tensor name for `old`: another real one, a layer index changed, a suffix changed, junk.
fn new_name(rng: &mut Rng, old: &str, pool: &[String]) -> String {
    match rng.below(5) {
        0 => rng.pick(pool),
        1 => match old.find("layers.") {
            Some(i) => {
                let rest = &old[i + 7..];
                let end = rest.find('.').unwrap_or(rest.len());
                let index = rng.pick(&[
                    "3",
                    "4",
                    "99",
                    "-1",
                    "01",
                    "18446744073709551615",
                    "18446744073709551616",
                    "",
                ]);
                format!("{}layers.{index}{}", &old[..i], &rest[end..])
            }
            None => rng.pick(pool),
        },
        2 => rng
            .pick(&[
                "",
                " ",
                "model",
                "model.layers.",
                "model.layers.0",
                "__metadata__",
                "é",
                "model.norm.weight\0",
            ])
            .to_string(),
        3 => {
            if rng.chance(1, 2) {
                format!("{old}.extra")
            } else {
                old.to_uppercase()
            }
        }
        _ => match rng.below(4) {
            0 => old.replace(".weight", ".lora_A.weight"),
            1 => old.replace("lora_A", "lora_B"),
            2 => old.replace("beacon_", ""),
            _ => old.replace("q_proj", "k_proj"),
        },
    }
}

fn offsets_of(info: &Value) -> (u64, u64) {
    let get = |i: usize| {
        info.get("data_offsets")
            .and_then(|o| o.get(i))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (get(0), get(1))
}

fn interesting_offset(rng: &mut Rng, orig: u64, data_len: u64) -> u64 {
    match rng.below(4) {
        0 => data_len,
        1 => data_len + 1 + rng.below(8) as u64,
        2 => data_len.saturating_sub(1 + rng.below(8) as u64),
        _ => interesting_u64(rng, orig),
    }
}

/// Bytes per element of a safetensors dtype.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" | "C64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "E8M0" => 1,
        _ => return None,
    })
}

/// Gives tensor `name` a new shape and dtype with data of the matching size, and packs every
/// tensor again, so that the file stays valid safetensors: only the loader's own checks (shapes,
/// dtypes, ranks, layer counts) can reject it. Does nothing if the header is already broken.
fn reshape_tensor(rng: &mut Rng, st: &mut St, name: &str) {
    let Some(info) = st.header.get(name) else {
        return;
    };
    let Some(old_shape) = info.get("shape").and_then(Value::as_array).map(|s| {
        s.iter()
            .map(|d| d.as_u64().unwrap_or(0) as usize)
            .collect::<Vec<_>>()
    }) else {
        return;
    };
    let mut shape = old_shape.clone();
    match rng.below(6) {
        0 => shape.reverse(),
        1 => shape = vec![shape.iter().product()],
        2 => shape.clear(),
        3 => shape.push(1),
        4 if !shape.is_empty() => {
            let i = rng.below(shape.len());
            shape[i] = rng.pick(&[0, 1, 4, 12, 95, 97, 192, 1000]);
        }
        _ => shape.insert(0, rng.pick(&[0, 2, 3])),
    }
    let dtype = if rng.chance(1, 3) {
        rng.pick(&["F16", "BF16", "F64", "I32", "U8", "BOOL", "I64"])
    } else {
        "F32"
    };
    let Some(bytes) = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype_size(dtype)?))
        .filter(|&n| n <= 16 << 20)
    else {
        return;
    };
    // Every entry, in data order, with its bytes (the new tensor's are random).
    let mut entries: Vec<(u64, String, Value, Vec<u8>)> = Vec::new();
    for (n, info) in &st.header {
        if n == "__metadata__" {
            continue;
        }
        if !info.is_object() {
            return;
        }
        let (a, b) = offsets_of(info);
        let Some(data) = st.data.get(a as usize..b as usize) else {
            return;
        };
        let data = if n == name {
            let mut x = rng.next();
            (0..bytes)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 56) as u8 & 0x3f
                })
                .collect()
        } else {
            data.to_vec()
        };
        entries.push((a, n.clone(), info.clone(), data));
    }
    entries.sort_by_key(|e| e.0);
    let mut data = Vec::new();
    for (_, n, mut info, bytes) in entries {
        let start = data.len();
        data.extend_from_slice(&bytes);
        info["data_offsets"] = json!([start, data.len()]);
        if n == name {
            info["shape"] = json!(shape);
            info["dtype"] = json!(dtype);
        }
        st.header.insert(n, info);
    }
    st.data = Arc::new(data);
}

/// One structural mutation of a safetensors header (or of its data).
fn mutate_st(rng: &mut Rng, st: &mut St, pool: &[String]) {
    let names = st.names();
    let name = if names.is_empty() {
        String::from("model.norm.weight")
    } else {
        names[rng.below(names.len())].clone()
    };
    let data_len = st.data.len() as u64;
    match rng.below(15) {
        13 | 14 => reshape_tensor(rng, st, &name),
        0 => {
            let v = match st.header.get(&name) {
                Some(info) if rng.chance(1, 5) => {
                    interesting_json(rng, info.get("dtype").unwrap_or(&Value::Null))
                }
                _ => json!(rng.pick(&DTYPES)),
            };
            if let Some(info) = st.header.get_mut(&name).and_then(Value::as_object_mut) {
                info.insert("dtype".into(), v);
            }
        }
        1 | 2 => {
            let Some(info) = st.header.get_mut(&name).and_then(Value::as_object_mut) else {
                return;
            };
            let mut shape: Vec<Value> = info
                .get("shape")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match rng.below(7) {
                0 if !shape.is_empty() => {
                    let i = rng.below(shape.len());
                    let orig = shape[i].as_u64().unwrap_or(0);
                    shape[i] = json!(interesting_u64(rng, orig));
                }
                1 if !shape.is_empty() => {
                    let i = rng.below(shape.len());
                    shape[i] = interesting_json(rng, &shape[i].clone());
                }
                2 => shape.push(json!(rng.pick(&[0u64, 1, 2, 96]))),
                3 => {
                    shape.pop();
                }
                4 => shape.clear(),
                5 => shape.reverse(),
                _ => {
                    let v = interesting_json(rng, &Value::Array(shape));
                    info.insert("shape".into(), v);
                    return;
                }
            }
            info.insert("shape".into(), Value::Array(shape));
        }
        3 | 4 => {
            let others: Vec<Value> = st
                .header
                .values()
                .filter_map(|v| v.get("data_offsets").cloned())
                .collect();
            let Some(info) = st.header.get_mut(&name).and_then(Value::as_object_mut) else {
                return;
            };
            let (a, b) = offsets_of(&Value::Object(info.clone()));
            let v = match rng.below(8) {
                0 => json!([interesting_offset(rng, a, data_len), b]),
                1 => json!([a, interesting_offset(rng, b, data_len)]),
                2 => json!([b, a]),
                3 => json!([a, a]),
                4 => {
                    let d = rng.pick(&[1u64, 4, 8, 384]);
                    if rng.chance(1, 2) {
                        json!([a + d, b + d])
                    } else {
                        json!([a.saturating_sub(d), b.saturating_sub(d)])
                    }
                }
                5 if !others.is_empty() => rng.pick(&others),
                6 => match rng.below(4) {
                    0 => json!([a, b, b]),
                    1 => json!([a]),
                    2 => json!([-1, b]),
                    _ => json!([a as f64 + 0.5, b]),
                },
                _ => interesting_json(rng, &json!([a, b])),
            };
            info.insert("data_offsets".into(), v);
        }
        5 => {
            if let Some(info) = st.header.remove(&name) {
                let new = new_name(rng, &name, pool);
                st.header.insert(new, info);
            }
        }
        6 => {
            st.header.remove(&name);
        }
        7 => {
            let new = new_name(rng, &name, pool);
            let info = match rng.below(3) {
                0 => st.header.get(&name).cloned().unwrap_or(Value::Null),
                1 => {
                    let (a, b) = (
                        interesting_offset(rng, 0, data_len),
                        interesting_offset(rng, data_len, data_len),
                    );
                    json!({
                        "dtype": rng.pick(&DTYPES),
                        "shape": [rng.pick(&[0u64, 1, 96, 1 << 40])],
                        "data_offsets": [a, b],
                    })
                }
                _ => interesting_json(rng, &Value::Null),
            };
            st.header.insert(new, info);
        }
        8 => match rng.below(5) {
            0 => {
                let v = interesting_json(rng, &Value::Null);
                st.header.insert("__metadata__".into(), v);
            }
            1 => {
                st.header.remove("__metadata__");
            }
            _ => {
                let key = rng.pick(&META_KEYS);
                let value = if rng.chance(3, 4) {
                    json!(interesting_meta_string(rng))
                } else {
                    interesting_json(rng, &Value::Null)
                };
                let meta = st.header.entry("__metadata__").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    meta.insert(key.to_string(), value);
                }
            }
        },
        9 => {
            let field = rng.pick(&["dtype", "shape", "data_offsets", "extra"]);
            let v = interesting_json(rng, &Value::Null);
            match st.header.get_mut(&name) {
                Some(Value::Object(info)) => {
                    if rng.chance(1, 2) {
                        info.remove(field);
                    } else {
                        info.insert(field.to_string(), v);
                    }
                }
                Some(other) => *other = v,
                None => {}
            }
        }
        10 | 11 => {
            let mut root = Value::Object(std::mem::take(&mut st.header));
            mutate_json_tree(rng, &mut root);
            match root {
                Value::Object(m) => st.header = m,
                other => st.raw_header = Some(serde_json::to_vec(&other).expect("json")),
            }
        }
        _ => {
            let data = Arc::make_mut(&mut st.data);
            let len = data.len();
            match rng.below(4) {
                0 => {
                    for _ in 0..1 + rng.below(16) {
                        if len > 0 {
                            let p = rng.below(len);
                            data[p] ^= 1 << rng.below(8);
                        }
                    }
                }
                1 => {
                    for _ in 0..1 + rng.below(64) {
                        if len >= 4 {
                            let p = rng.below(len / 4) * 4;
                            let v: f32 = rng.pick(&[
                                f32::NAN,
                                f32::INFINITY,
                                f32::NEG_INFINITY,
                                f32::MAX,
                                1e-45,
                                -0.0,
                            ]);
                            data[p..p + 4].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
                2 => data.truncate(rng.below(len + 1)),
                _ => data.extend(std::iter::repeat_n(0u8, 1 + rng.below(64))),
            }
        }
    }
}

/// A mutated copy of a safetensors seed, as file bytes.
fn mutated_safetensors(rng: &mut Rng, seed: &St, pool: &[String]) -> Vec<u8> {
    let mut st = seed.clone();
    let mut len_override = None;
    let mut raw = 0;
    for _ in 0..mutation_count(rng) {
        match rng.below(10) {
            0..=6 => mutate_st(rng, &mut st, pool),
            7 => len_override = Some(interesting_u64(rng, st.header_bytes().len() as u64)),
            _ => raw += 1,
        }
    }
    let mut bytes = st.to_bytes(len_override);
    let hot = 8 + st.header_bytes().len() + 16;
    for _ in 0..raw {
        mutate_bytes(rng, &mut bytes, hot);
    }
    bytes
}

// =============================================================================================
// GGUF: a writer that records where each field is, and the model C seed
// =============================================================================================

/// A GGUF metadata value as written (array elements may disagree with the element type).
#[derive(Clone, Debug)]
enum GVal {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(u8),
    Str(Vec<u8>),
    Arr(u32, Vec<GVal>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GVal {
    fn ty(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::Str(_) => 8,
            Self::Arr(..) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    fn str(s: &str) -> Self {
        Self::Str(s.as_bytes().to_vec())
    }

    fn strings<S: AsRef<str>>(items: &[S]) -> Self {
        Self::Arr(8, items.iter().map(|s| Self::str(s.as_ref())).collect())
    }
}

#[derive(Clone)]
struct GTensor {
    name: Vec<u8>,
    /// ggml order (fastest-varying first).
    dims: Vec<u64>,
    ty: u32,
    /// `None`: right after the previous tensor, aligned.
    offset: Option<u64>,
    data: Arc<Vec<u8>>,
}

#[derive(Clone)]
struct GgufDoc {
    magic: [u8; 4],
    version: u32,
    kvs: Vec<(Vec<u8>, GVal)>,
    tensors: Vec<GTensor>,
    /// The alignment the writer lays the data out with.
    alignment: u64,
}

/// What a recorded field of a written GGUF file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fk {
    Magic,
    Version,
    TensorCount,
    KvCount,
    KeyLen,
    ValueType,
    StrLen,
    ElemType,
    ArrayLen,
    Scalar,
    NameLen,
    NDims,
    Dim,
    GgmlType,
    Offset,
}

const FIELD_KINDS: [Fk; 15] = [
    Fk::Magic,
    Fk::Version,
    Fk::TensorCount,
    Fk::KvCount,
    Fk::KeyLen,
    Fk::ValueType,
    Fk::StrLen,
    Fk::ElemType,
    Fk::ArrayLen,
    Fk::Scalar,
    Fk::NameLen,
    Fk::NDims,
    Fk::Dim,
    Fk::GgmlType,
    Fk::Offset,
];

#[derive(Clone, Copy)]
struct Field {
    kind: Fk,
    pos: usize,
    width: usize,
    orig: u64,
}

struct GgufOut {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

impl GgufOut {
    fn int(&mut self, kind: Fk, width: usize, v: u64) {
        self.fields.push(Field {
            kind,
            pos: self.bytes.len(),
            width,
            orig: v,
        });
        self.bytes.extend_from_slice(&v.to_le_bytes()[..width]);
    }

    fn string(&mut self, len_kind: Fk, s: &[u8]) {
        self.int(len_kind, 8, s.len() as u64);
        self.bytes.extend_from_slice(s);
    }

    fn value(&mut self, v: &GVal) {
        match v {
            GVal::U8(x) => self.int(Fk::Scalar, 1, (*x).into()),
            GVal::I8(x) => self.int(Fk::Scalar, 1, *x as u8 as u64),
            GVal::U16(x) => self.int(Fk::Scalar, 2, (*x).into()),
            GVal::I16(x) => self.int(Fk::Scalar, 2, *x as u16 as u64),
            GVal::U32(x) => self.int(Fk::Scalar, 4, (*x).into()),
            GVal::I32(x) => self.int(Fk::Scalar, 4, *x as u32 as u64),
            GVal::F32(x) => self.int(Fk::Scalar, 4, x.to_bits().into()),
            GVal::Bool(x) => self.int(Fk::Scalar, 1, (*x).into()),
            GVal::Str(s) => self.string(Fk::StrLen, s),
            GVal::Arr(elem, items) => {
                self.int(Fk::ElemType, 4, (*elem).into());
                self.int(Fk::ArrayLen, 8, items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            GVal::U64(x) => self.int(Fk::Scalar, 8, *x),
            GVal::I64(x) => self.int(Fk::Scalar, 8, *x as u64),
            GVal::F64(x) => self.int(Fk::Scalar, 8, x.to_bits()),
        }
    }
}

/// Tensor data is only placed when it starts within this many bytes of the data section.
const MAX_PLACED_OFFSET: u64 = 1 << 26;

impl GgufDoc {
    /// The file bytes, the recorded fields, and where the data section starts.
    fn build(&self) -> (Vec<u8>, Vec<Field>, usize) {
        let a = self.alignment.max(1);
        let align = |n: u64| n.div_ceil(a).saturating_mul(a);
        let mut out = GgufOut {
            bytes: Vec::new(),
            fields: Vec::new(),
        };
        out.fields.push(Field {
            kind: Fk::Magic,
            pos: 0,
            width: 4,
            orig: u32::from_le_bytes(self.magic).into(),
        });
        out.bytes.extend_from_slice(&self.magic);
        out.int(Fk::Version, 4, self.version.into());
        out.int(Fk::TensorCount, 8, self.tensors.len() as u64);
        out.int(Fk::KvCount, 8, self.kvs.len() as u64);
        for (key, value) in &self.kvs {
            out.string(Fk::KeyLen, key);
            out.int(Fk::ValueType, 4, value.ty().into());
            out.value(value);
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut next = 0u64;
        for t in &self.tensors {
            let offset = t.offset.unwrap_or(next);
            offsets.push(offset);
            next = align(offset.saturating_add(t.data.len() as u64).min(u64::MAX / 2));
            out.string(Fk::NameLen, &t.name);
            out.int(Fk::NDims, 4, t.dims.len() as u64);
            for &d in &t.dims {
                out.int(Fk::Dim, 8, d);
            }
            out.int(Fk::GgmlType, 4, t.ty.into());
            out.int(Fk::Offset, 8, offset);
        }
        let data_start = align(out.bytes.len() as u64) as usize;
        let mut bytes = out.bytes;
        bytes.resize(data_start, 0);
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            if t.data.is_empty() || offset > MAX_PLACED_OFFSET {
                continue;
            }
            let at = data_start + offset as usize;
            if bytes.len() < at + t.data.len() {
                bytes.resize(at + t.data.len(), 0);
            }
            bytes[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        (bytes, out.fields, data_start)
    }

    fn kv_index(&self, key: &str) -> Option<usize> {
        self.kvs.iter().position(|(k, _)| k == key.as_bytes())
    }

    fn set(&mut self, key: &str, value: GVal) {
        match self.kv_index(key) {
            Some(i) => self.kvs[i].1 = value,
            None => self.kvs.push((key.as_bytes().to_vec(), value)),
        }
    }
}

/// GPT-2's byte-to-character map of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec!['\0'; 256];
    for (b, c) in bytes.into_iter().zip(chars) {
        out[b as usize] = char::from_u32(c).expect("char");
    }
    out
}

const VOCAB: usize = 512;

/// A 512-token byte-level BPE vocabulary: the 256 byte tokens, merges of common letter pairs,
/// filler tokens, a user-defined token and three control tokens.
fn seed_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let bc = byte_chars();
    let mut tokens: Vec<String> = bc.iter().map(char::to_string).collect();
    let mut merges = Vec::new();
    let space = bc[usize::from(b' ')];
    for c in "etaoinshrdlucmfwypvbgk".chars() {
        merges.push(format!("{space} {c}"));
        tokens.push(format!("{space}{c}"));
    }
    for a in "etaoinsh".chars() {
        for b in "etaoinshrd".chars() {
            merges.push(format!("{a} {b}"));
            tokens.push(format!("{a}{b}"));
        }
    }
    while tokens.len() < VOCAB - 4 {
        tokens.push(format!("<unused{}>", tokens.len()));
    }
    tokens.push("<user>".into());
    for control in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(control.into());
    }
    let mut types = vec![1; VOCAB];
    types[VOCAB - 4] = 4;
    for t in &mut types[VOCAB - 3..] {
        *t = 3;
    }
    (tokens, types, merges)
}

/// The GGUF name of an HF tensor of model C (6 query heads, 2 key/value heads) and the heads
/// whose Q/K rows are permuted: the loader's own map (`focusllm_models::gguf::gguf_name`).
fn gguf_tensor_name(hf: &str) -> Option<(String, usize)> {
    focusllm::models::gguf::gguf_name(hf, 6, 2)
}

/// `convert_hf_to_gguf.py`'s permutation of Q/K rows (the loader undoes it): GGUF row
/// `h*d + 2i + j` is HF row `h*d + j*d/2 + i` of head `h`.
fn permute_qk(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(values.len());
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + j * half + i) * cols;
                out.extend_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

/// Model C as a GGUF v3 document (F32 tensors under llama.cpp names, with the metadata the loader
/// reads and a byte-level BPE tokenizer), or its metadata only.
fn gguf_seed(weights: &St, with_tensors: bool) -> GgufDoc {
    let (tokens, types, merges) = seed_vocab();
    let mut doc = GgufDoc {
        magic: *b"GGUF",
        version: 3,
        kvs: Vec::new(),
        tensors: Vec::new(),
        alignment: 32,
    };
    doc.set("general.architecture", GVal::str("llama"));
    doc.set("general.name", GVal::str("focusllm fuzz seed (model C)"));
    doc.set("general.alignment", GVal::U32(32));
    for (key, v) in [
        ("llama.block_count", 3),
        ("llama.context_length", 8192),
        ("llama.embedding_length", 96),
        ("llama.feed_forward_length", 160),
        ("llama.attention.head_count", 6),
        ("llama.attention.head_count_kv", 2),
        ("llama.vocab_size", VOCAB as u32),
        ("llama.rope.dimension_count", 16),
    ] {
        doc.set(key, GVal::U32(v));
    }
    doc.set("llama.rope.freq_base", GVal::F32(10000.0));
    doc.set("llama.attention.layer_norm_rms_epsilon", GVal::F32(1e-5));
    doc.set("tokenizer.ggml.model", GVal::str("gpt2"));
    doc.set("tokenizer.ggml.pre", GVal::str("smollm"));
    doc.set("tokenizer.ggml.tokens", GVal::strings(&tokens));
    doc.set(
        "tokenizer.ggml.token_type",
        GVal::Arr(5, types.into_iter().map(GVal::I32).collect()),
    );
    doc.set("tokenizer.ggml.merges", GVal::strings(&merges));
    doc.set("tokenizer.ggml.bos_token_id", GVal::U32(1));
    doc.set("tokenizer.ggml.eos_token_id", GVal::U32(2));
    doc.set("tokenizer.ggml.add_bos_token", GVal::Bool(0));
    doc.set(
        "tokenizer.chat_template",
        GVal::str(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
        ),
    );
    if with_tensors {
        for hf in weights.names() {
            let Some((name, heads)) = gguf_tensor_name(&hf) else {
                continue;
            };
            let (shape, mut values) = weights.tensor_f32(&hf);
            if heads > 0 {
                values = permute_qk(&values, shape[0], shape[1], heads);
            }
            doc.tensors.push(GTensor {
                name: name.into_bytes(),
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                ty: dequant::GGML_TYPE_F32,
                offset: None,
                data: Arc::new(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            });
        }
    }
    doc
}

const LLAMA_KEYS: [&str; 12] = [
    "general.architecture",
    "general.alignment",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.vocab_size",
    "llama.rope.dimension_count",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
];

const TOKENIZER_KEYS: [&str; 9] = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
];

const SMALL_SIZES: [u32; 26] = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    12,
    15,
    16,
    32,
    48,
    95,
    96,
    97,
    160,
    192,
    256,
    511,
    512,
    513,
    8191,
    1 << 31,
    u32::MAX,
];

fn weird_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(12) {
        0 => Vec::new(),
        1 => vec![0xff, 0xfe],
        2 => b" ".to_vec(),
        3 => b"a".to_vec(),
        4 => b"a ".to_vec(),
        5 => b" a".to_vec(),
        6 => "\u{120} \u{120}".as_bytes().to_vec(),
        7 => b"zz qq".to_vec(),
        8 => b"a  b".to_vec(),
        9 => vec![0; 3],
        10 => "<|im_start|>".as_bytes().to_vec(),
        _ => b"x".repeat(5000),
    }
}

/// An arbitrary metadata value of any type.
fn interesting_gval(rng: &mut Rng, depth: usize) -> GVal {
    match rng.below(14) {
        0 => GVal::U8(rng.pick(&[0, 1, 255])),
        1 => GVal::I8(rng.pick(&[-1, -128, 127])),
        2 => GVal::U16(rng.pick(&[0, 96, 65535])),
        3 => GVal::I16(rng.pick(&[-1, i16::MIN])),
        4 => GVal::U32(rng.pick(&SMALL_SIZES)),
        5 => GVal::I32(rng.pick(&[-1, i32::MIN, 6, 96])),
        6 => GVal::F32(rng.pick(&[
            0.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-45,
            1e38,
            1e4,
        ])),
        7 => GVal::Bool(rng.pick(&[0, 1, 2, 255])),
        8 => GVal::Str(weird_bytes(rng)),
        9 | 10 if depth < 10 => {
            let elem = rng.pick(&[0u32, 4, 5, 6, 8, 9, 10, 12, 13, 255]);
            let n = rng.pick(&[0usize, 1, 2, 5]);
            let items = (0..n)
                .map(|_| {
                    if elem == 9 {
                        interesting_gval(rng, depth + 1)
                    } else {
                        GVal::U32(rng.pick(&SMALL_SIZES))
                    }
                })
                .collect();
            GVal::Arr(elem, items)
        }
        11 => GVal::U64(interesting_u64(rng, 0)),
        12 => GVal::I64(rng.pick(&[-1, i64::MIN, i64::MAX])),
        _ => GVal::F64(rng.pick(&[0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e300])),
    }
}

/// A key of `keys` (3 in 4) or of the document (1 in 4), as an index into `doc.kvs`.
fn pick_kv(rng: &mut Rng, doc: &GgufDoc, keys: &[&str]) -> Option<usize> {
    if doc.kvs.is_empty() {
        return None;
    }
    if rng.chance(3, 4) {
        let key = rng.pick(keys);
        if let Some(i) = doc.kv_index(key) {
            return Some(i);
        }
    }
    Some(rng.below(doc.kvs.len()))
}

fn gguf_tensor_names(doc: &GgufDoc) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = doc.tensors.iter().map(|t| t.name.clone()).collect();
    for extra in [
        "blk.3.attn_norm.weight",
        "blk.0.attn_q.bias",
        "output.weight",
        "blk.18446744073709551616.attn_q.weight",
        "",
    ] {
        names.push(extra.as_bytes().to_vec());
    }
    names.push(vec![0xff, b'x']);
    names
}

/// One structural mutation of a GGUF document.
fn mutate_gguf_doc(rng: &mut Rng, doc: &mut GgufDoc, tokenizer_focus: bool) {
    let kind = if tokenizer_focus && rng.chance(1, 2) {
        rng.pick(&[0, 2, 5, 5, 6, 6])
    } else {
        rng.below(15)
    };
    let all_keys: Vec<&str> = LLAMA_KEYS.iter().chain(&TOKENIZER_KEYS).copied().collect();
    let keys: &[&str] = if tokenizer_focus {
        &TOKENIZER_KEYS
    } else {
        &all_keys
    };
    match kind {
        0 => {
            if let Some(i) = pick_kv(rng, doc, keys) {
                doc.kvs[i].1 = interesting_gval(rng, 0);
            }
        }
        1 => {
            let key = rng.pick(&LLAMA_KEYS[1..]);
            let value = if key.contains("freq_base") || key.contains("epsilon") {
                match rng.below(3) {
                    0 => GVal::F32(rng.pick(&[0.0, -1.0, f32::NAN, f32::INFINITY, 1e-45, 1e38])),
                    1 => GVal::F64(rng.pick(&[0.0, -1.0, f64::NAN, 1e-300, 1e300])),
                    _ => GVal::U32(rng.pick(&SMALL_SIZES)),
                }
            } else {
                match rng.below(4) {
                    0 | 1 => GVal::U32(rng.pick(&SMALL_SIZES)),
                    2 => GVal::U64(interesting_u64(rng, 96)),
                    _ => rng.pick(&[
                        GVal::I32(-1),
                        GVal::I8(-1),
                        GVal::U8(6),
                        GVal::I64(i64::MIN),
                        GVal::F32(96.0),
                        GVal::F64(f64::NAN),
                        GVal::Bool(1),
                    ]),
                }
            };
            doc.set(key, value);
        }
        2 => {
            if let Some(i) = pick_kv(rng, doc, keys) {
                doc.kvs.remove(i);
            }
        }
        3 => {
            if let Some(i) = pick_kv(rng, doc, keys) {
                let kv = doc.kvs[i].clone();
                let at = rng.below(doc.kvs.len() + 1);
                doc.kvs.insert(at, kv);
            }
        }
        4 => {
            let v = interesting_u64(rng, 32);
            let v = rng.pick(&[0, 1, 2, 3, 8, 16, 31, 64, 4096, 1 << 30, 1 << 31, v]);
            let value = if v <= u64::from(u32::MAX) && rng.chance(1, 2) {
                GVal::U32(v as u32)
            } else {
                GVal::U64(v)
            };
            doc.set("general.alignment", value);
            if v.is_power_of_two() && v <= 4096 && rng.chance(1, 2) {
                doc.alignment = v;
            }
        }
        5 => {
            let key = rng.pick(&[
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges",
            ]);
            let Some(i) = doc.kv_index(key) else { return };
            let fill = weird_bytes(rng);
            let odd = interesting_gval(rng, 0);
            if let GVal::Arr(elem, items) = &mut doc.kvs[i].1 {
                let n = items.len();
                match rng.below(8) {
                    0 => items.truncate(rng.below(n + 1)),
                    1 => {
                        for _ in 0..1 + rng.below(4) {
                            let item = match items.first() {
                                Some(first) if rng.chance(1, 2) => first.clone(),
                                _ => GVal::Str(fill.clone()),
                            };
                            items.push(item);
                        }
                    }
                    2 if n > 0 => items[rng.below(n)] = GVal::Str(fill),
                    3 if n > 0 => items[rng.below(n)] = odd,
                    4 => *elem = rng.pick(&[0, 4, 5, 6, 7, 8, 9, 10, 12, 13, 255, u32::MAX]),
                    5 if n > 1 => {
                        let (a, b) = (rng.below(n), rng.below(n));
                        items.swap(a, b);
                    }
                    6 if n > 1 => {
                        // A duplicate token string or merge.
                        let (a, b) = (rng.below(n), rng.below(n));
                        items[a] = items[b].clone();
                    }
                    _ => items.clear(),
                }
            }
        }
        6 => {
            let key = rng.pick(&[
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template",
            ]);
            let value = match key {
                "tokenizer.ggml.model" => {
                    GVal::str(rng.pick(&["gpt2", "llama", "bert", "", "GPT2", "rwkv"]))
                }
                "tokenizer.ggml.pre" => GVal::str(rng.pick(&[
                    "default",
                    "gpt2",
                    "smollm",
                    "starcoder",
                    "llama-bpe",
                    "llama3",
                    "qwen2",
                    "deepseek-coder",
                    "",
                ])),
                "tokenizer.ggml.add_bos_token" => GVal::Bool(rng.pick(&[0, 1, 2])),
                "tokenizer.chat_template" => GVal::Str(weird_bytes(rng)),
                _ => rng.pick(&[
                    GVal::U32(0),
                    GVal::U32(511),
                    GVal::U32(512),
                    GVal::U32(u32::MAX),
                    GVal::U64(1 << 32),
                    GVal::I32(-1),
                    GVal::str("1"),
                ]),
            };
            doc.set(key, value);
        }
        7 => {
            if doc.tensors.is_empty() {
                return;
            }
            let i = rng.below(doc.tensors.len());
            let dims = &mut doc.tensors[i].dims;
            let n = dims.len();
            match rng.below(7) {
                0 if n > 0 => {
                    let j = rng.below(n);
                    dims[j] = interesting_u64(rng, dims[j]);
                }
                1 => dims.push(rng.pick(&[1, 2, 0, 1 << 33])),
                2 => {
                    dims.pop();
                }
                3 => dims.clear(),
                4 => dims.reverse(),
                5 => dims.extend([1, 1, 1, 1]),
                _ if n > 0 => {
                    let j = rng.below(n);
                    dims[j] = u64::from(rng.pick(&[1u32, 12, 32, 48, 96, 160, 192, 512]));
                }
                _ => {}
            }
        }
        8 => {
            if doc.tensors.is_empty() {
                return;
            }
            let i = rng.below(doc.tensors.len());
            let t = &mut doc.tensors[i];
            t.ty = if rng.chance(3, 4) {
                rng.below(41) as u32
            } else {
                rng.pick(&[255, 1000, u32::MAX])
            };
            // Half the time, data of the size the new type needs (random bytes).
            let n = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let size = n
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| dequant::data_size(t.ty, n));
            if let Some(size) = size
                && size <= 8 << 20
                && rng.chance(1, 2)
            {
                let mut data = vec![0u8; size];
                let mut x = rng.next();
                for b in &mut data {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *b = (x >> 56) as u8;
                }
                t.data = Arc::new(data);
            }
        }
        9 => {
            if doc.tensors.is_empty() {
                return;
            }
            let i = rng.below(doc.tensors.len());
            let v = interesting_u64(rng, 0);
            doc.tensors[i].offset = Some(rng.pick(&[
                0,
                1,
                4,
                31,
                32,
                64,
                1 << 20,
                1 << 40,
                u64::MAX - 31,
                u64::MAX,
                v,
            ]));
        }
        10 => {
            if doc.tensors.is_empty() {
                return;
            }
            let n = doc.tensors.len();
            let i = rng.below(n);
            match rng.below(5) {
                0 => {
                    doc.tensors.remove(i);
                }
                1 => {
                    let t = doc.tensors[i].clone();
                    doc.tensors.push(t);
                }
                2 => {
                    let names = gguf_tensor_names(doc);
                    doc.tensors[i].name = rng.pick(&names);
                }
                3 => {
                    // Swap two tensors' names (e.g. attn_q and attn_k).
                    let j = rng.below(n);
                    let name = doc.tensors[i].name.clone();
                    doc.tensors[i].name = doc.tensors[j].name.clone();
                    doc.tensors[j].name = name;
                }
                _ => {
                    let j = rng.below(n);
                    doc.tensors.swap(i, j);
                }
            }
        }
        11 => {
            if rng.chance(1, 3) {
                doc.magic = rng.pick(&[*b"GGUf", *b"FUGG", *b"GGML", [0; 4]]);
            } else {
                doc.version = rng.pick(&[0, 1, 2, 4, 0x0300_0000, 0x0200_0000, u32::MAX]);
            }
        }
        12 => {
            if doc.tensors.is_empty() {
                return;
            }
            let i = rng.below(doc.tensors.len());
            let data = Arc::make_mut(&mut doc.tensors[i].data);
            let len = data.len();
            for _ in 0..1 + rng.below(16) {
                if len >= 4 {
                    let p = rng.below(len / 4) * 4;
                    let v: f32 = rng.pick(&[f32::NAN, f32::INFINITY, f32::MAX, 1e-45]);
                    data[p..p + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        13 => {
            if let Some(i) = pick_kv(rng, doc, keys) {
                let key = String::from_utf8_lossy(&doc.kvs[i].0).into_owned();
                doc.kvs[i].0 = match rng.below(5) {
                    0 => Vec::new(),
                    1 => vec![0xff, 0xfe],
                    2 => key.replace("llama.", "gpt2.").into_bytes(),
                    3 => format!("{key}.x").into_bytes(),
                    _ => rng.pick(&all_keys).as_bytes().to_vec(),
                };
            }
        }
        _ => {
            // Arrays nested past the reader's depth limit, under a real key.
            let mut v = GVal::Arr(8, vec![GVal::str("x")]);
            for _ in 0..rng.pick(&[2usize, 8, 9, 12]) {
                v = GVal::Arr(9, vec![v]);
            }
            let key = rng.pick(keys);
            doc.set(key, v);
        }
    }
}

/// Overwrites one recorded field of a built file with a value chosen for its kind.
fn mutate_field(rng: &mut Rng, bytes: &mut [u8], fields: &[Field]) {
    let present: Vec<Fk> = FIELD_KINDS
        .iter()
        .copied()
        .filter(|k| fields.iter().any(|f| f.kind == *k))
        .collect();
    if present.is_empty() {
        return;
    }
    let kind = rng.pick(&present);
    let of_kind: Vec<&Field> = fields.iter().filter(|f| f.kind == kind).collect();
    let f = *rng.pick(&of_kind);
    let v: u64 = match f.kind {
        Fk::Magic => u32::from_le_bytes(rng.pick(&[*b"GGUf", *b"GGML", [0; 4], *b"FUGG"])).into(),
        Fk::Version => rng.pick(&[0, 1, 2, 3, 4, 0x0300_0000, u64::from(u32::MAX)]),
        Fk::ValueType | Fk::ElemType => {
            if rng.chance(3, 4) {
                rng.below(13) as u64
            } else {
                rng.pick(&[13, 14, 255, 0x8000_0000, u64::from(u32::MAX)])
            }
        }
        Fk::NDims => rng.pick(&[0, 1, 2, 3, 4, 5, 8, 255, u64::from(u32::MAX)]),
        Fk::GgmlType => {
            if rng.chance(3, 4) {
                rng.below(41) as u64
            } else {
                rng.pick(&[255, 1000, u64::from(u32::MAX)])
            }
        }
        Fk::Scalar => {
            if rng.chance(1, 2) {
                rng.next()
            } else {
                interesting_u64(rng, f.orig)
            }
        }
        _ => interesting_u64(rng, f.orig),
    };
    if f.pos + f.width <= bytes.len() {
        bytes[f.pos..f.pos + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
    }
}

/// A mutated copy of a GGUF seed, as file bytes.
fn mutated_gguf(rng: &mut Rng, seed: &GgufDoc, tokenizer_focus: bool) -> Vec<u8> {
    let mut doc = seed.clone();
    let (mut field_ops, mut raw_ops) = (0, 0);
    for _ in 0..mutation_count(rng) {
        match rng.below(10) {
            0..=5 => mutate_gguf_doc(rng, &mut doc, tokenizer_focus),
            6 | 7 => field_ops += 1,
            _ => raw_ops += 1,
        }
    }
    let (mut bytes, fields, data_start) = doc.build();
    for _ in 0..field_ops {
        mutate_field(rng, &mut bytes, &fields);
    }
    for _ in 0..raw_ops {
        if rng.chance(1, 3) && !fields.is_empty() {
            // Cut at (or just inside) a field.
            let f = rng.pick(&fields);
            bytes.truncate(f.pos + rng.below(f.width + 1));
        } else {
            mutate_bytes(rng, &mut bytes, data_start);
        }
    }
    bytes
}

// =============================================================================================
// Seeds
// =============================================================================================

struct Seeds {
    config_text: String,
    weights: St,
    /// Model C's tensor names and a few more that a loader may look for.
    weight_names: Vec<String>,
    gguf: GgufDoc,
    gguf_meta: GgufDoc,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = model_c_dir();
        let config_text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        let bytes = std::fs::read(dir.join("model.safetensors")).expect("model.safetensors");
        let weights = St::parse(&bytes);
        let mut weight_names = weights.names();
        weight_names.extend(
            [
                "model.layers.3.input_layernorm.weight",
                "model.layers.0.self_attn.q_proj.bias",
                "model.layers.0.self_attn.beacon_q_proj.bias",
                "model.layers.0.mlp.beacon_up_proj.weight",
                "model.layers.0.mlp.beacon_down_proj.weight",
            ]
            .map(String::from),
        );
        let gguf = gguf_seed(&weights, true);
        let gguf_meta = gguf_seed(&weights, false);
        Seeds {
            config_text,
            weights,
            weight_names,
            gguf,
            gguf_meta,
        }
    })
}

fn device_of<Bk: burn::tensor::backend::Backend>() -> Bk::Device {
    Default::default()
}

/// Model C itself (safetensors fixture).
fn model_c() -> LlamaModel<B> {
    load_model::<B>(&model_c_dir(), &device_of::<B>())
        .expect("model C loads")
        .model
}

// =============================================================================================
// The loaders' tests
// =============================================================================================

/// An HF directory: the fixture's `config.json` and a mutated `model.safetensors`.
#[test]
fn fuzz_safetensors() {
    let scratch = Scratch::new(Target::Safetensors);
    let dir = scratch.path().to_path_buf();
    let s = seeds();
    write_file(&dir.join("config.json"), &s.config_text);
    run_target(Target::Safetensors, |rng| {
        let bytes = match rng {
            None => s.weights.to_bytes(None),
            Some(rng) => mutated_safetensors(rng, &s.weights, &s.weight_names),
        };
        write_file(&dir.join("model.safetensors"), bytes);
        match load_model::<B>(&dir, &device_of::<B>()) {
            Ok(loaded) => forward(&loaded.model),
            Err(e) => Verdict::error("load", &e),
        }
    });
}

const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

/// A sharded HF directory: `model.safetensors.index.json` and two shards, any of them mutated.
#[test]
fn fuzz_sharded_safetensors() {
    let scratch = Scratch::new(Target::Sharded);
    let dir = scratch.path().to_path_buf();
    let s = seeds();
    write_file(&dir.join("config.json"), &s.config_text);
    let names = s.weights.names();
    let half: Vec<String> = names[..names.len() / 2].to_vec();
    let shards = [
        s.weights.subset(|n| half.iter().any(|h| h == n)),
        s.weights.subset(|n| !half.iter().any(|h| h == n)),
    ];
    let mut weight_map = Map::new();
    for (file, shard) in SHARDS.iter().zip(&shards) {
        for name in shard.names() {
            weight_map.insert(name, json!(file));
        }
    }
    let index = json!({
        "metadata": { "total_size": s.weights.data.len() },
        "weight_map": weight_map,
    });
    let index_path = dir.join("model.safetensors.index.json");
    run_target(Target::Sharded, |rng| {
        let mut index = index.clone();
        let mut shard_bytes = [
            Some(shards[0].to_bytes(None)),
            Some(shards[1].to_bytes(None)),
        ];
        let mut index_text = serde_json::to_vec_pretty(&index).expect("json");
        if let Some(rng) = rng {
            let mut index_raw = 0;
            for _ in 0..mutation_count(rng) {
                match rng.below(8) {
                    0..=2 => {
                        let i = rng.below(2);
                        shard_bytes[i] = Some(mutated_safetensors(rng, &shards[i], &names));
                    }
                    3 => shard_bytes[rng.below(2)] = None,
                    4 => {
                        // Point a tensor at another file.
                        let Some(map) = index.get_mut("weight_map").and_then(Value::as_object_mut)
                        else {
                            continue;
                        };
                        let name = map.keys().nth(rng.below(map.len())).cloned();
                        let target = match rng.below(10) {
                            0 => json!(SHARDS[0]),
                            1 => json!(SHARDS[1]),
                            2 => json!("missing.safetensors"),
                            3 => json!(""),
                            4 => json!("."),
                            5 => json!("config.json"),
                            6 => json!("model.safetensors.index.json"),
                            7 => json!("sub/dir.safetensors"),
                            8 => json!("../focusllm-fuzz-missing.safetensors"),
                            _ => interesting_json(rng, &Value::Null),
                        };
                        if let Some(name) = name {
                            map.insert(name, target);
                        }
                    }
                    5 => {
                        let Some(map) = index.get_mut("weight_map").and_then(Value::as_object_mut)
                        else {
                            continue;
                        };
                        let name = map.keys().nth(rng.below(map.len())).cloned();
                        if let Some(name) = name {
                            map.remove(&name);
                        }
                    }
                    6 => mutate_json_tree(rng, &mut index),
                    _ => index_raw += 1,
                }
            }
            index_text = serde_json::to_vec_pretty(&index).expect("json");
            for _ in 0..index_raw {
                if rng.chance(1, 8) {
                    index_text.clear();
                } else {
                    mutate_bytes(rng, &mut index_text, 0);
                }
            }
        }
        write_file(&index_path, &index_text);
        for (file, bytes) in SHARDS.iter().zip(&shard_bytes) {
            let path = dir.join(file);
            match bytes {
                Some(bytes) => write_file(&path, bytes),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        match load_model::<B>(&dir, &device_of::<B>()) {
            Ok(loaded) => forward(&loaded.model),
            Err(e) => Verdict::error("load", &e),
        }
    });
}

const CONFIG_FIELDS: [&str; 19] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "bos_token_id",
    "eos_token_id",
    "model_type",
    "architectures",
    "hidden_act",
    "beacon_param",
];

fn mutated_config(rng: &mut Rng, seed: &str) -> String {
    let mut cfg: Value = serde_json::from_str(seed).expect("seed config");
    let mut raw = 0;
    for _ in 0..mutation_count(rng) {
        let field = rng.pick(&CONFIG_FIELDS);
        let orig = cfg.get(field).cloned().unwrap_or(Value::Null);
        let Some(map) = cfg.as_object_mut() else {
            break;
        };
        match rng.below(9) {
            0 | 1 => {
                map.insert(field.into(), interesting_json(rng, &orig));
            }
            2 => {
                let v = match rng.below(4) {
                    0 => json!(interesting_u64(rng, orig.as_u64().unwrap_or(0))),
                    1 => json!(rng.pick(&[-1i64, i64::MIN, -96])),
                    2 => json!(rng.pick(&[0.5, 96.0, 1e20, -0.0])),
                    _ => json!(rng.pick(&["NaN", "inf", "96", "0x60"])),
                };
                map.insert(field.into(), v);
            }
            3 => {
                map.remove(field);
            }
            4 => {
                let float = |rng: &mut Rng| -> Value {
                    match rng.below(3) {
                        0 => json!(rng.pick(&[0.0, -2.0, 1e308, 5e-324, 1.0, 8.0])),
                        1 => json!(rng.pick(&["NaN", "2"])),
                        _ => interesting_json(rng, &json!(2.0)),
                    }
                };
                let mut scaling = json!({
                    "rope_type": rng.pick(&["linear", "llama3", "default", "dynamic", "yarn", ""]),
                    "factor": float(rng),
                });
                for key in [
                    "low_freq_factor",
                    "high_freq_factor",
                    "original_max_position_embeddings",
                ] {
                    if rng.chance(1, 2) {
                        scaling[key] = if key.starts_with("original") && rng.chance(1, 2) {
                            json!(interesting_u64(rng, 8192))
                        } else {
                            float(rng)
                        };
                    }
                }
                if rng.chance(1, 4) {
                    let v = scaling["rope_type"].take();
                    scaling["type"] = v;
                }
                map.insert("rope_scaling".into(), scaling);
            }
            5 => {
                // Values near the valid ones, which may well load.
                let (key, v) = match rng.below(10) {
                    0 => ("hidden_size", json!(rng.pick(&[48, 95, 192]))),
                    1 => ("num_attention_heads", json!(rng.pick(&[1, 2, 3, 4, 12]))),
                    2 => ("num_key_value_heads", json!(rng.pick(&[1, 3, 6]))),
                    3 => ("num_hidden_layers", json!(rng.pick(&[1, 2, 4]))),
                    4 => ("head_dim", json!(rng.pick(&[8, 15, 16, 32]))),
                    5 => ("vocab_size", json!(rng.pick(&[5, 256, 511, 513]))),
                    6 => ("intermediate_size", json!(rng.pick(&[80, 320]))),
                    7 => ("tie_word_embeddings", json!(true)),
                    8 => ("attention_bias", json!(true)),
                    _ => ("model_type", json!(rng.pick(&["qwen2", "mistral"]))),
                };
                map.insert(key.into(), v);
            }
            6 | 7 => mutate_json_tree(rng, &mut cfg),
            _ => raw += 1,
        }
    }
    let mut text = serde_json::to_string_pretty(&cfg)
        .expect("json")
        .into_bytes();
    for _ in 0..raw {
        if rng.chance(1, 4) {
            // A duplicate key, or a token JSON does not have.
            let extra = rng.pick(&[
                ", \"vocab_size\": 5",
                ", \"hidden_size\": NaN",
                ", \"rope_theta\": 1e999",
                ", \"num_hidden_layers\": 18446744073709551616",
            ]);
            if let Some(end) = text.iter().rposition(|&b| b == b'}') {
                text.splice(end..end, extra.bytes());
            }
        } else {
            mutate_bytes(rng, &mut text, 0);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// `config.json`: parsed with `LlamaConfig::from_json_str`; what parses is loaded with model C's
/// weights (hard-linked) and run.
#[test]
fn fuzz_config_json() {
    let scratch = Scratch::new(Target::Config);
    let dir = scratch.path().to_path_buf();
    let weights = dir.join("model.safetensors");
    if std::fs::hard_link(model_c_dir().join("model.safetensors"), &weights).is_err() {
        std::fs::copy(model_c_dir().join("model.safetensors"), &weights).expect("copy weights");
    }
    let s = seeds();
    let config_path = dir.join("config.json");
    run_target(Target::Config, |rng| {
        let text = match rng {
            None => s.config_text.clone(),
            Some(rng) => mutated_config(rng, &s.config_text),
        };
        if let Err(e) = LlamaConfig::from_json_str(&text, &config_path) {
            return Verdict::error("parse", &e);
        }
        write_file(&config_path, &text);
        match load_model::<B>(&dir, &device_of::<B>()) {
            Ok(loaded) => forward(&loaded.model),
            Err(e) => Verdict::error("load", &e),
        }
    });
}

/// A GGUF model file (model C converted), loaded with `load_model` and run; its tokenizer is
/// exercised.
#[test]
fn fuzz_gguf_model() {
    let scratch = Scratch::new(Target::Gguf);
    let path = scratch.path().join("model.gguf");
    let s = seeds();
    run_target(Target::Gguf, |rng| {
        let bytes = match rng {
            None => s.gguf.build().0,
            Some(rng) => mutated_gguf(rng, &s.gguf, false),
        };
        write_file(&path, bytes);
        match load_model::<B>(&path, &device_of::<B>()) {
            Ok(loaded) => {
                if let Some(tokenizer) = &loaded.tokenizer {
                    let v = exercise_tokenizer(tokenizer);
                    if !v.ok {
                        return v;
                    }
                }
                forward(&loaded.model)
            }
            Err(e) => Verdict::error("load", &e),
        }
    });
}

/// GGUF metadata alone (no tensors): `GgufFile::open`, `config_from_gguf`, and the tokenizer
/// built from `tokenizer.ggml.*` (`tokenizer_from_gguf`), exercised.
#[test]
fn fuzz_gguf_tokenizer() {
    let scratch = Scratch::new(Target::GgufTokenizer);
    let path = scratch.path().join("meta.gguf");
    let s = seeds();
    run_target(Target::GgufTokenizer, |rng| {
        let bytes = match rng {
            None => s.gguf_meta.build().0,
            Some(rng) => mutated_gguf(rng, &s.gguf_meta, true),
        };
        write_file(&path, bytes);
        let gguf = match GgufFile::open(&path) {
            Ok(gguf) => gguf,
            Err(e) => return Verdict::error("open", &e),
        };
        // The metadata reader must not panic either; its result is not the point here.
        let _ = config_from_gguf(&gguf);
        match focusllm::models::gguf::tokenizer_from_gguf(&gguf) {
            Ok(built) => {
                let _ = (
                    built.bos_id,
                    built.eos_id,
                    built.add_bos,
                    built.chat_template,
                );
            }
            Err(e) => return Verdict::error("tokenizer", &e),
        }
        match Tokenizer::from_gguf(&gguf) {
            Ok(tokenizer) => exercise_tokenizer(&tokenizer),
            Err(e) => Verdict::error("tokenizer", &e),
        }
    });
}

fn adapter_names(layers: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..layers {
        for p in ["q", "k", "v", "o"] {
            for suffix in ["weight", "lora_A.weight", "lora_B.weight"] {
                names.push(format!(
                    "model.layers.{i}.self_attn.beacon_{p}_proj.{suffix}"
                ));
            }
        }
    }
    names
}

/// Candidate adapters (full and low-rank, with metadata), loaded for model C, applied and run.
#[test]
fn fuzz_candidate_adapter() {
    let scratch = Scratch::new(Target::Adapter);
    let model = model_c();
    let info = AdapterInfo {
        step_mode: Some("frozen".into()),
        training: Some("fuzz seed".into()),
        base_model: Some("model C".into()),
        local_window: Some(512),
        chunk_size: Some(700),
        prompt_cap: Some(128),
    };
    let seed_dir = scratch.subdir("seeds");
    let full_path = seed_dir.join("full.safetensors");
    CandidateAdapter::full(&model)
        .save(&full_path, &info)
        .expect("save full adapter");
    let low_path = seed_dir.join("low-rank.safetensors");
    CandidateAdapter::low_rank(&model, 4, 7)
        .expect("low-rank adapter")
        .save(&low_path, &info)
        .expect("save low-rank adapter");
    let seeds_st = [
        St::parse(&std::fs::read(&full_path).expect("read")),
        St::parse(&std::fs::read(&low_path).expect("read")),
    ];
    let pool = adapter_names(4);
    let path = scratch.path().join("adapter.safetensors");
    let load_and_run = |bytes: Vec<u8>| -> Verdict {
        write_file(&path, bytes);
        match CandidateAdapter::<B>::load(&path, &model) {
            Ok((adapter, _info)) => match adapter.apply(model.clone()) {
                Ok(adapted) => forward(&adapted),
                Err(e) => Verdict::error("apply", &e),
            },
            Err(e) => Verdict::error("load", &e),
        }
    };
    run_target(Target::Adapter, |rng| match rng {
        None => {
            for seed in &seeds_st {
                let v = load_and_run(seed.to_bytes(None));
                if !v.ok {
                    return v;
                }
            }
            Verdict::ok()
        }
        Some(rng) => {
            let seed = &seeds_st[rng.below(2)];
            let bytes = mutated_safetensors(rng, seed, &pool);
            load_and_run(bytes)
        }
    });
}

/// A tokenizer.json component that parses but is inconsistent in some way (the kinds of crafted
/// files that make tokenizer libraries panic), with the top-level key it goes under.
fn crafted_component(rng: &mut Rng) -> (&'static str, Value) {
    let special = |id: &str| json!({ "SpecialToken": { "id": id, "type_id": 0 } });
    let seq = json!({ "Sequence": { "id": "A", "type_id": 0 } });
    match rng.below(16) {
        0 => (
            "post_processor",
            json!({
                "type": "TemplateProcessing",
                "single": [special("[CLS]"), seq],
                "pair": [seq, seq],
                "special_tokens": {},
            }),
        ),
        1 => (
            "post_processor",
            json!({
                "type": "TemplateProcessing",
                "single": [special("<s>"), seq],
                "pair": [seq],
                "special_tokens": { "<s>": { "id": "<s>", "ids": [], "tokens": ["<s>", "x"] } },
            }),
        ),
        2 => (
            "post_processor",
            json!({ "type": "RobertaProcessing", "sep": ["</s>", 1u64 << 40], "cls": ["<s>", 0],
                    "trim_offsets": true, "add_prefix_space": true }),
        ),
        3 => (
            "decoder",
            json!({ "type": "Strip", "content": rng.pick(&[" ", "H", "Ġ"]),
                    "start": rng.pick(&[0, 1, 5]), "stop": rng.pick(&[1, 5, 100]) }),
        ),
        4 => (
            "decoder",
            json!({ "type": "Sequence", "decoders": [
                { "type": "Strip", "content": "e", "start": 3, "stop": 3 },
                { "type": "ByteFallback" },
                { "type": "Fuse" },
            ] }),
        ),
        5 => (
            "normalizer",
            json!({ "type": "Precompiled",
                    "precompiled_charsmap": rng.pick(&["", "AAAA", "!!!", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"]) }),
        ),
        6 => (
            "model",
            json!({ "type": "Unigram", "unk_id": rng.pick(&[0, 5, 1000]),
                    "vocab": [["a", 0.0]], "byte_fallback": rng.chance(1, 2) }),
        ),
        7 => (
            "model",
            json!({ "type": "Unigram", "unk_id": null, "vocab": [], "byte_fallback": false }),
        ),
        8 => (
            "model",
            json!({ "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                    "max_input_chars_per_word": rng.pick(&[0u64, 1, u64::MAX]),
                    "vocab": { "a": 0, "##b": 1u64 << 40 } }),
        ),
        9 => (
            "model",
            json!({ "type": "WordLevel", "vocab": { "a": 0, "b": 7 }, "unk_token": "<unk>" }),
        ),
        10 => (
            "model",
            json!({ "type": "BPE", "dropout": rng.pick(&[2.0, -1.0, 0.5]), "unk_token": "<unk>",
                    "byte_fallback": true, "fuse_unk": true, "vocab": { "a": 0, "b": 1 },
                    "merges": [["a", "b"]] }),
        ),
        11 => (
            "pre_tokenizer",
            json!({ "type": "Split", "pattern": { "Regex": rng.pick(&["(", "(?=a)", "", "a{99999}"]) },
                    "behavior": "Isolated", "invert": rng.chance(1, 2) }),
        ),
        12 => (
            "pre_tokenizer",
            json!({ "type": "Metaspace", "replacement": rng.pick(&["", "▁", "ab"]),
                    "prepend_scheme": "always", "split": true }),
        ),
        13 => (
            "truncation",
            json!({ "direction": "Right", "max_length": rng.pick(&[0, 1, 2]),
                    "strategy": "LongestFirst", "stride": rng.pick(&[0, 5, 1000]) }),
        ),
        14 => (
            "padding",
            json!({ "strategy": { "Fixed": rng.pick(&[0, 1, 64]) }, "direction": "Left",
                    "pad_to_multiple_of": rng.pick(&[json!(null), json!(0), json!(3)]),
                    "pad_id": 1u64 << 40, "pad_type_id": 0, "pad_token": "<pad>" }),
        ),
        _ => (
            "added_tokens",
            json!([{ "id": rng.pick(&[0u64, 511, 512, u64::from(u32::MAX)]),
                     "content": rng.pick(&["", "a", "<|im_start|>"]),
                     "single_word": true, "lstrip": true, "rstrip": true,
                     "normalized": rng.chance(1, 2), "special": rng.chance(1, 2) }]),
        ),
    }
}

/// The seed `tokenizer.json`: the GGUF seed's tokenizer, serialized by the tokenizers crate.
fn tokenizer_json_seed() -> Value {
    let scratch_file = std::env::temp_dir().join(format!(
        "focusllm-fuzz-tokenizer-seed-{}.gguf",
        std::process::id()
    ));
    write_file(&scratch_file, seeds().gguf_meta.build().0);
    let gguf = GgufFile::open(&scratch_file).expect("seed GGUF opens");
    let _ = std::fs::remove_file(&scratch_file);
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("seed tokenizer");
    let text = tokenizer.inner().to_string(false).expect("serialize");
    serde_json::from_str(&text).expect("tokenizer.json")
}

/// `tokenizer.json` (and a sibling `tokenizer_config.json`), loaded with `Tokenizer::from_file`
/// and exercised.
#[test]
fn fuzz_tokenizer_json() {
    let scratch = Scratch::new(Target::TokenizerJson);
    let path = scratch.path().join("tokenizer.json");
    let config_path = scratch.path().join("tokenizer_config.json");
    let seed = tokenizer_json_seed();
    let seed_config = json!({
        "bos_token": "<|endoftext|>",
        "eos_token": { "content": "<|im_end|>" },
        "chat_template": "<|im_start|>",
    });
    run_target(Target::TokenizerJson, |rng| {
        let mut tokenizer = seed.clone();
        let mut config = seed_config.clone();
        let mut raw = 0;
        if let Some(rng) = rng {
            for _ in 0..mutation_count(rng) {
                match rng.below(9) {
                    0..=4 => mutate_json_tree(rng, &mut tokenizer),
                    5 => {
                        // A vocabulary id far outside the vocabulary, or an added token's id.
                        let id = json!(rng.pick(&[
                            512u64,
                            u64::from(u32::MAX),
                            1 << 32,
                            1 << 40,
                            u64::MAX
                        ]));
                        if rng.chance(1, 2) {
                            if let Some(vocab) = tokenizer
                                .get_mut("model")
                                .and_then(|m| m.get_mut("vocab"))
                                .and_then(Value::as_object_mut)
                            {
                                let key = vocab.keys().nth(rng.below(vocab.len())).cloned();
                                if let Some(key) = key {
                                    vocab.insert(key, id);
                                }
                            }
                        } else if let Some(added) = tokenizer
                            .get_mut("added_tokens")
                            .and_then(Value::as_array_mut)
                            && !added.is_empty()
                        {
                            let i = rng.below(added.len());
                            if let Some(token) = added[i].as_object_mut() {
                                token.insert("id".into(), id);
                            }
                        }
                    }
                    6 => mutate_json_tree(rng, &mut config),
                    7 => {
                        let (key, component) = crafted_component(rng);
                        if let Some(root) = tokenizer.as_object_mut() {
                            root.insert(key.into(), component);
                        }
                    }
                    _ => raw += 1,
                }
            }
            let mut text = serde_json::to_vec(&tokenizer).expect("json");
            for _ in 0..raw {
                mutate_bytes(rng, &mut text, 0);
            }
            write_file(&path, text);
        } else {
            write_file(&path, serde_json::to_vec(&tokenizer).expect("json"));
        }
        write_file(
            &config_path,
            serde_json::to_vec(&config).expect("json config"),
        );
        match Tokenizer::from_file(&path) {
            Ok(t) => exercise_tokenizer(&t),
            Err(e) => Verdict::error("load", &e),
        }
    });
}

// =============================================================================================
// The seeds themselves
// =============================================================================================

/// The GGUF seed is a faithful conversion: the same logits as model C's safetensors (so the
/// Q/K permutation and names are right), and its tokenizer round-trips text.
#[test]
fn gguf_seed_matches_model_c() {
    let scratch = std::env::temp_dir().join(format!(
        "focusllm-fuzz-gguf-parity-{}.gguf",
        std::process::id()
    ));
    write_file(&scratch, seeds().gguf.build().0);
    let loaded = load_model::<B>(&scratch, &device_of::<B>());
    let _ = std::fs::remove_file(&scratch);
    let loaded = loaded.unwrap_or_else(|e| panic!("the GGUF seed does not load: {e}"));
    let reference = model_c();
    let ids = [1, 5, 7, 300, 42];
    let logits = |model: &LlamaModel<B>| {
        FocusEngine::new(model, engine_config())
            .expect("engine")
            .session()
            .prefill(&ids)
            .expect("prefill")
    };
    let (got, expected) = (logits(&loaded.model), logits(&reference));
    assert_eq!(got.len(), expected.len());
    let diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-4,
        "GGUF seed logits differ from model C's by {diff}"
    );

    let tokenizer = loaded.tokenizer.expect("the GGUF seed has a tokenizer");
    assert_eq!(tokenizer.vocab_size(), VOCAB);
    let encoded = tokenizer.encode(TEXT).expect("encode");
    assert!(encoded.contains(&510), "<|im_start|> is one control token");
    assert_eq!(tokenizer.decode(&encoded).expect("decode"), TEXT);
}

/// Reproducibility: a case's mutation depends on (seed, loader, index) only.
#[test]
fn cases_are_reproducible() {
    let s = seeds();
    for target in TARGETS {
        let mut a = Rng::for_case(1, target, 17);
        let mut b = Rng::for_case(1, target, 17);
        assert_eq!(a.next(), b.next());
    }
    let mut a = Rng::for_case(9, Target::Gguf, 3);
    let mut b = Rng::for_case(9, Target::Gguf, 3);
    assert_eq!(
        mutated_gguf(&mut a, &s.gguf_meta, true),
        mutated_gguf(&mut b, &s.gguf_meta, true)
    );
    let mut a = Rng::for_case(9, Target::Safetensors, 3);
    let mut b = Rng::for_case(9, Target::Safetensors, 3);
    assert_eq!(
        mutated_safetensors(&mut a, &s.weights, &s.weight_names),
        mutated_safetensors(&mut b, &s.weights, &s.weight_names)
    );
    let mut a = Rng::for_case(9, Target::Config, 3);
    let mut b = Rng::for_case(9, Target::Config, 3);
    assert_eq!(
        mutated_config(&mut a, &s.config_text),
        mutated_config(&mut b, &s.config_text)
    );
}

/// The allocation guard is not vacuous: a huge request made inside a case is noticed (and one
/// made outside a case is not).
#[test]
fn allocation_guard_notices_huge_requests() {
    let request = |n: usize| drop(std::hint::black_box(Vec::<u8>::with_capacity(n)));
    HUGE.with(|h| h.set(0));
    request(HUGE_ALLOCATION + 1);
    assert_eq!(HUGE.with(Cell::get), 0, "outside a case");
    RUNNING.with(|r| r.set(0));
    request(HUGE_ALLOCATION);
    let small = HUGE.with(Cell::get);
    request(HUGE_ALLOCATION + 1);
    let huge = HUGE.with(Cell::get);
    RUNNING.with(|r| r.set(IDLE));
    HUGE.with(|h| h.set(0));
    assert_eq!((small, huge), (0, HUGE_ALLOCATION + 1));
}

/// The bugs this harness found stay fixed: each input used to panic, and now gives a typed error.
#[test]
fn found_bugs_stay_fixed() {
    let dir =
        std::env::temp_dir().join(format!("focusllm-fuzz-regressions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let quiet = |what: &str, call: &mut dyn FnMut() -> Result<(), ModelError>| match catch_unwind(
        AssertUnwindSafe(call),
    ) {
        Ok(result) => result,
        Err(p) => panic!("{what}: panicked: {}", payload_text(p.as_ref())),
    };

    // GGUF `attn_q` with no dimension (`shape[0]` of an empty shape), or with three whose first
    // is a multiple of 2 * heads (the un-permutation asserted `[rows, cols]`).
    for dims in [vec![], vec![2, 1, 12]] {
        let mut doc = seeds().gguf.clone();
        let q = doc
            .tensors
            .iter_mut()
            .find(|t| t.name == b"blk.0.attn_q.weight")
            .expect("attn_q");
        q.dims = dims.clone();
        let path = dir.join("regression.gguf");
        write_file(&path, doc.build().0);
        let err = quiet("GGUF attn_q dims", &mut || {
            load_model::<B>(&path, &device_of::<B>()).map(|_| ())
        });
        assert!(
            matches!(&err, Err(ModelError::ShapeMismatch { tensor, .. }) if tensor.contains("q_proj")),
            "attn_q dims {dims:?}: {err:?}"
        );
    }

    // tokenizer.json that the tokenizers crate panics on, at load, encode or decode.
    let seed = tokenizer_json_seed();
    let text = serde_json::to_string(&seed).expect("json");
    let at = text.find("\"decoder\"").expect("decoder") + 25;
    let mut crafted: Vec<(&str, String)> = vec![("truncated in the decoder", text[..at].into())];
    let mut with = |what, key: &str, component: Value| {
        let mut t = seed.clone();
        t[key] = component;
        crafted.push((what, t.to_string()));
    };
    with(
        "bad Precompiled normalizer",
        "normalizer",
        json!({ "type": "Precompiled", "precompiled_charsmap": "!!!" }),
    );
    with(
        "Strip decoder longer than tokens",
        "decoder",
        json!({ "type": "Strip", "content": "\u{120}", "start": 0, "stop": 5 }),
    );
    with(
        "truncation stride past max_length",
        "truncation",
        json!({ "direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 5 }),
    );
    for (what, json) in crafted {
        let path = dir.join("tokenizer.json");
        write_file(&path, json);
        let result = quiet(what, &mut || {
            let t = Tokenizer::from_file(&path)?;
            let ids = t.encode(TEXT)?;
            t.decode(&ids).map(|_| ())
        });
        assert!(
            matches!(result, Err(ModelError::Tokenizer(_))),
            "{what}: {result:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

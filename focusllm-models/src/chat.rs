//! Chat templates: a checkpoint's own Jinja template, rendered as Hugging Face `transformers` does.
//!
//! Instruct models ship the format of their conversations as a Jinja template (`chat_template` in
//! `tokenizer_config.json`, `chat_template.jinja`, or `tokenizer.chat_template` in a GGUF file).
//! [`ChatTemplate`] compiles such a template once with [`minijinja`] and renders a list of
//! [`ChatMessage`]s with it, in the environment `transformers`' `apply_chat_template` provides:
//!
//! - whitespace: `trim_blocks` and `lstrip_blocks` on, the template's single trailing newline
//!   dropped (`keep_trailing_newline` off), no auto-escaping — the settings `transformers`
//!   compiles chat templates with;
//! - variables: `messages` (each a map with `role` and `content`, in that order),
//!   `add_generation_prompt`, `bos_token` and `eos_token` (when known; left undefined otherwise,
//!   as `transformers` does for a tokenizer without them), `tools` and `documents` (`none`);
//! - functions: `raise_exception(message)` (an error of kind
//!   [`ChatTemplateFailure::Raised`] carrying the template's message) and `strftime_now(format)`
//!   (the current date and time, in UTC; see [`ChatTemplate::render_with`] to pin a date);
//! - filters: `tojson` with Python's `json.dumps` output and its arguments (`indent`,
//!   `separators`, `sort_keys`, `ensure_ascii`), as `transformers` overrides it; the other Jinja
//!   builtins from `minijinja`;
//! - Python string, list and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`,
//!   `.get()`, ...) through `minijinja_contrib::pycompat`.
//!
//! Differences from `transformers`:
//! - the `{% generation %}` tag of its assistant-mask extension is not supported (a template that
//!   uses it fails to compile, with a typed error);
//! - maps other than the messages (extra variables of [`ChatTemplate::render_with`], map literals
//!   in templates) iterate in sorted key order, not Python's insertion order, so `tojson` of a tool
//!   schema lists its keys alphabetically;
//! - `strftime_now` gives UTC, not local time.
//!
//! Every failure is a [`ModelError::ChatTemplate`] naming the template's origin, what failed
//! ([`ChatTemplateFailure`]) and the template line at fault; rendering never panics.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Kwargs, Object, Rest, Serde, Value, ValueKind, ValueOrKwargs};
use minijinja::{AutoEscape, Environment, Error, ErrorKind};

pub use crate::error::ChatTemplateFailure;
use crate::error::ModelError;

/// The name the template is registered under in its `minijinja` environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The origin reported for a template given directly to [`ChatTemplate::new`].
const DIRECT_ORIGIN: &str = "chat template";

/// Who speaks a [`ChatMessage`]; rendered as the lowercase `role` string templates test for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatRole {
    /// Instructions for the whole conversation (`"system"`).
    System,
    /// The person talking to the model (`"user"`).
    User,
    /// The model (`"assistant"`).
    Assistant,
}

impl ChatRole {
    /// The role string templates see: `"system"`, `"user"` or `"assistant"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for ChatRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One turn of a conversation: a role and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: ChatRole,
    /// What is said, as is (templates may trim it).
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(ChatRole::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(ChatRole::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(ChatRole::Assistant, content)
    }
}

/// A message as templates see it: a map with `role` then `content` (Python's dict order, which
/// `tojson` and `.items()` show).
#[derive(Debug)]
struct MessageValue {
    role: &'static str,
    content: Value,
}

impl Object for MessageValue {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role)),
            "content" => Some(self.content.clone()),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// A compiled chat template with the special-token strings it may refer to.
///
/// Compile once, render many times; cloning is cheap (the compiled template is shared).
///
/// ```
/// use focusllm_models::chat::{ChatMessage, ChatTemplate};
///
/// let template = ChatTemplate::new(
///     "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content.strip() }}\n\
///      {% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
///     Some("<s>"),
///     Some("</s>"),
/// )?;
/// let prompt = template.render(
///     &[ChatMessage::system("Be brief."), ChatMessage::user("  Hi!  ")],
///     true,
/// )?;
/// assert_eq!(prompt, "<s><|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\n");
/// # Ok::<(), focusllm_models::ModelError>(())
/// ```
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    origin: String,
    source: Arc<str>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template). `bos_token` and `eos_token` are the token
    /// *strings* the template may print (e.g. `"<s>"`); `None` leaves the variable undefined.
    ///
    /// Errors with [`ModelError::ChatTemplate`] ([`ChatTemplateFailure::Compile`], with the line)
    /// if the template is not valid Jinja.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, ModelError> {
        Self::with_origin(DIRECT_ORIGIN, source, bos_token, eos_token)
    }

    /// As [`ChatTemplate::new`], with `origin` (a file, a metadata key) named in errors.
    pub(crate) fn with_origin(
        origin: &str,
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        let mut syntax = SyntaxConfig::builder();
        syntax
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false);
        let syntax = syntax
            .build()
            .map_err(|e| template_error(origin, source, ChatTemplateFailure::Compile, &e))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| template_error(origin, source, ChatTemplateFailure::Compile, &e))?;
        Ok(Self {
            env: Arc::new(env),
            origin: origin.to_string(),
            source: Arc::from(source),
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from, as named in errors (`"chat template"` for one given to
    /// [`ChatTemplate::new`]).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The BOS string the template sees as `bos_token`, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS string the template sees as `eos_token`, if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages`; with `add_generation_prompt` the template appends the opening of an
    /// assistant turn (what a model continues from). No BOS or other text is added beyond what
    /// the template prints.
    ///
    /// Errors with [`ModelError::ChatTemplate`]: [`ChatTemplateFailure::Raised`] when the template
    /// rejects the conversation itself (`raise_exception`, e.g. roles that do not alternate),
    /// [`ChatTemplateFailure::Render`] for any other failure (an undefined attribute, a type
    /// error), both with the template line.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// As [`ChatTemplate::render`], with extra template variables (the keyword arguments of
    /// `transformers`' `apply_chat_template`): e.g. `date_string` to pin the date a Llama 3.x
    /// template prints, `tools` (a list of JSON schemas) for templates that describe tools, or
    /// `enable_thinking`. Extras may replace `bos_token`, `eos_token`, `tools` and `documents`;
    /// `messages` and `add_generation_prompt` always come from the arguments.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ModelError> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token".into(), Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token".into(), Value::from(eos.as_str()));
        }
        for (key, value) in extra {
            ctx.insert(key.clone(), Value::from(Serde(value)));
        }
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_object(MessageValue {
                    role: m.role.as_str(),
                    content: Value::from(m.content.as_str()),
                })
            })
            .collect();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let fail = |e: &Error| {
            let failure = if raised_message(e).is_some() {
                ChatTemplateFailure::Raised
            } else {
                ChatTemplateFailure::Render
            };
            template_error(&self.origin, &self.source, failure, e)
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| fail(&e))?;
        template.render(Value::from(ctx)).map_err(|e| fail(&e))
    }
}

/// The message a template passed to `raise_exception`, carried as the error's source.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// `raise_exception(message)`: fails the render with the template's own message.
fn raise_exception(message: Value) -> Result<Value, Error> {
    let text = match message.as_str() {
        Some(s) => s.to_string(),
        None => message.to_string(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)))
}

/// The `raise_exception` message behind `error`, if that is what it is.
fn raised_message(error: &Error) -> Option<&str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return Some(&raised.0);
        }
        source = e.source();
    }
    None
}

/// Turns a `minijinja` error into [`ModelError::ChatTemplate`], with the line and its text.
fn template_error(
    origin: &str,
    source: &str,
    failure: ChatTemplateFailure,
    error: &Error,
) -> ModelError {
    let line = error.line().filter(|&n| n > 0);
    let what = match raised_message(error) {
        Some(message) => message.to_string(),
        None => {
            let mut what = match error.detail() {
                Some(detail) if failure == ChatTemplateFailure::Compile => detail.to_string(),
                Some(detail) => format!("{}: {detail}", error.kind()),
                None => error.kind().to_string(),
            };
            let mut cause = std::error::Error::source(error);
            while let Some(e) = cause {
                what.push_str(&format!(": {e}"));
                cause = e.source();
            }
            what
        }
    };
    let at = match line {
        Some(n) => {
            let text = source.lines().nth(n - 1).unwrap_or("").trim();
            let mut shown: String = text.chars().take(100).collect();
            if shown.len() < text.len() {
                shown.push('…');
            }
            format!(" at line {n} (`{shown}`)")
        }
        None => String::new(),
    };
    ModelError::ChatTemplate {
        origin: origin.to_string(),
        failure,
        line,
        message: format!("{failure}{at}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// strftime_now

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// `strftime_now(format)`: the current UTC time formatted as Python's `strftime` does, for the
/// directives `%Y %y %m %d %e %j %B %b %h %A %a %H %I %M %S %p %F %T %D %%`.
fn strftime_now(format: &str) -> Result<String, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(format, secs)
}

/// Formats `secs` (seconds since the Unix epoch, UTC) with `format`.
fn strftime(format: &str, secs: i64) -> Result<String, Error> {
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (in_day / 3600, in_day / 60 % 60, in_day % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "strftime_now: the format ends with a lone `%`",
            ));
        };
        match d {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            'm' => out.push_str(&format!("{month:02}")),
            'd' => out.push_str(&format!("{day:02}")),
            'e' => out.push_str(&format!("{day:2}")),
            'j' => out.push_str(&format!("{yday:03}")),
            'B' => out.push_str(month_name),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'A' => out.push_str(WEEKDAYS[weekday]),
            'a' => out.push_str(&WEEKDAYS[weekday][..3]),
            'H' => out.push_str(&format!("{hour:02}")),
            'I' => out.push_str(&format!("{hour12:02}")),
            'M' => out.push_str(&format!("{minute:02}")),
            'S' => out.push_str(&format!("{second:02}")),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'F' => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            'T' => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            'D' => out.push_str(&format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100))),
            '%' => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive `%{other}`"),
                ));
            }
        }
    }
    Ok(out)
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// tojson

/// `tojson`, as `transformers` defines it: Python's
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)` (the
/// arguments by position in that order, or by keyword). Unlike the stock Jinja filter it does not
/// escape HTML characters.
fn tojson(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let args: Vec<Value> = args.0.into_iter().map(Value::from).collect();
    let mut positional: &[Value] = &args;
    let mut kwargs = None;
    if let Some((last, rest)) = positional.split_last()
        && last.is_kwargs()
    {
        kwargs = Some(Kwargs::try_from(last.clone())?);
        positional = rest;
    }
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments (ensure_ascii, indent, separators, sort_keys)",
        ));
    }
    let mut given: [Option<Value>; 4] = Default::default();
    for (slot, v) in given.iter_mut().zip(positional) {
        *slot = Some(v.clone());
    }
    if let Some(kwargs) = &kwargs {
        for (slot, name) in given.iter_mut().zip(NAMES) {
            if kwargs.has(name) {
                if slot.is_some() {
                    return Err(Error::new(
                        ErrorKind::TooManyArguments,
                        format!("tojson got multiple values for argument `{name}`"),
                    ));
                }
                *slot = Some(kwargs.get::<Value>(name)?);
            }
        }
        kwargs.assert_all_used()?;
    }
    let [ensure_ascii, indent, separators, sort_keys] = given;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => match v.kind() {
                ValueKind::Bool => " ".repeat(usize::from(v.is_true())),
                _ => {
                    let n = v.as_i64().ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: indent must be an integer",
                        )
                    })?;
                    " ".repeat(n.max(0) as usize)
                }
            },
        }),
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !(v.is_none() || v.is_undefined()) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ));
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let writer = PyJson {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    writer.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps` layout.
struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl PyJson {
    fn write(&self, out: &mut String, value: &Value, level: usize) -> Result<(), Error> {
        if level > 500 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: the value is nested too deeply",
            ));
        }
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number(value)?),
            ValueKind::String => self.write_str(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, '[', ']', items.len(), level, |out, i| {
                    self.write(out, &items[i], level + 1)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((map_key(&key)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, '{', '}', entries.len(), level, |out, i| {
                    let (key, item) = &entries[i];
                    self.write_str(out, key);
                    out.push_str(&self.key_sep);
                    self.write(out, item, level + 1)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    fn write_container(
        &self,
        out: &mut String,
        open: char,
        close: char,
        len: usize,
        level: usize,
        mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, depth: usize| {
            if let Some(indent) = &self.indent {
                out.push('\n');
                for _ in 0..depth {
                    out.push_str(indent);
                }
            }
        };
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            newline(out, level + 1);
            item(out, i)?;
        }
        newline(out, level);
        out.push(close);
        Ok(())
    }

    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if self.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A map key as Python's `json.dumps` writes it (keys are always strings in JSON).
fn map_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::None => Ok("null".to_string()),
        ValueKind::Number => number(key),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be strings, numbers, booleans or none, not {kind}"),
        )),
    }
}

/// A number as Python writes it: integers as is, floats by `repr` (`1.0`, `1e+16`, `NaN`).
fn number(value: &Value) -> Result<String, Error> {
    if value.is_integer() {
        return Ok(value.to_string());
    }
    let f = f64::try_from(value.clone())?;
    Ok(py_float_repr(f))
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional notation for decimal
/// exponents in `-4..16`, scientific (`1e+16`, `1.5e-05`) otherwise.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        if exp < 0 {
            let zeros = "0".repeat((-exp - 1) as usize);
            format!("{sign}0.{zeros}{digits}")
        } else if exp + 1 >= n {
            let zeros = "0".repeat((exp + 1 - n) as usize);
            format!("{sign}{digits}{zeros}.0")
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: Value) -> String {
        let template = ChatTemplate::new(source, None, None).unwrap();
        template
            .env
            .render_str(source, ctx)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn python_float_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-0.0, "-0.0"),
            (123.25, "123.25"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e15, "1000000000000000.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5e-300, "-2.5e-300"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn tojson_matches_json_dumps() {
        let ctx = Value::from(Serde(serde_json::json!({
            "x": {"b": [1, 2.5, true, null], "a": "é<\"\n\u{1}>", "e": [], "o": {}}
        })));
        // json.dumps(x, ensure_ascii=False)
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()),
            r#"{"a": "é<\"\n\u0001>", "b": [1, 2.5, true, null], "e": [], "o": {}}"#
        );
        // json.dumps(x, indent=2)
        assert_eq!(
            render("{{ x | tojson(indent=2) }}", ctx.clone()),
            "{\n  \"a\": \"é<\\\"\\n\\u0001>\",\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"e\": [],\n  \"o\": {}\n}"
        );
        // json.dumps(x["b"], ensure_ascii=True, separators=(",", ":"))
        assert_eq!(
            render(
                "{{ x.a | tojson(true) }} {{ x.b | tojson(separators=(',', ':')) }}",
                ctx.clone()
            ),
            r#""\u00e9<\"\n\u0001>" [1,2.5,true,null]"#
        );
        assert_eq!(
            render("{{ '😀' | tojson(ensure_ascii=true) }}", ctx),
            r#""\ud83d\ude00""#
        );
    }

    #[test]
    fn strftime_directives() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %d, %Y %H:%M:%S %I%p %j %y %F %%", t).unwrap(),
            "Friday July 26, 2024 13:05:09 01PM 208 24 2024-07-26 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0).unwrap(), "1970-01-01");
        assert_eq!(
            strftime("%Y-%m-%d %a", 951_782_400).unwrap(),
            "2000-02-29 Tue"
        );
        assert!(strftime("%Q", t).is_err());
        assert!(strftime("50%", t).is_err());
        for days in [-800_000, -1, 0, 59, 10_957, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn messages_are_ordered_maps() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m | tojson }}{{ m.items() | list | length }}\
             {{ 'content' in m }}{{ m.get('role') }}{{ m.tool_calls is defined }}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("hi")], false).unwrap(),
            r#"{"role": "user", "content": "hi"}2TrueuserFalse"#
        );
    }

    #[test]
    fn chat_template_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<ChatTemplate>();
    }
}

//! Real chat templates (`tests/fixtures/chat_templates`, see its README) rendered with
//! [`ChatTemplate`] and [`Tokenizer`]: each expected prompt is worked out by hand from the
//! template's text, as `transformers`' `apply_chat_template(..., tokenize=False)` produces it.

use std::path::{Path, PathBuf};

use focusllm_models::{ChatMessage, ChatTemplate, ChatTemplateFailure, ModelError, Tokenizer};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_templates")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn smollm2() -> ChatTemplate {
    let source = fixture("HuggingFaceTB-SmolLM2-135M-Instruct.jinja");
    ChatTemplate::new(&source, Some("<|im_start|>"), Some("<|im_end|>")).unwrap()
}

fn llama31() -> ChatTemplate {
    let source = fixture("meta-llama-Llama-3.1-8B-Instruct.jinja");
    ChatTemplate::new(&source, Some("<|begin_of_text|>"), Some("<|eot_id|>")).unwrap()
}

fn mistral() -> ChatTemplate {
    let source = fixture("mistralai-Mistral-7B-Instruct-v0.2.jinja");
    ChatTemplate::new(&source, Some("<s>"), Some("</s>")).unwrap()
}

fn qwen25() -> ChatTemplate {
    let source = fixture("Qwen-Qwen2.5-7B-Instruct.jinja");
    ChatTemplate::new(&source, None, Some("<|im_end|>")).unwrap()
}

/// (a): one user message.
fn single() -> Vec<ChatMessage> {
    vec![ChatMessage::user("What is the capital of France?")]
}

/// (b): system, user, assistant, user; the last message ends with a newline (which the Llama
/// template trims and the others keep).
fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are a terse geography tutor."),
        ChatMessage::user("What is the capital of France?"),
        ChatMessage::assistant("Paris."),
        ChatMessage::user("And of Italy?\n"),
    ]
}

fn render(template: &ChatTemplate, messages: &[ChatMessage]) -> String {
    template
        .render(messages, true)
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct: ChatML with a default system turn.

#[test]
fn smollm2_single_user_message() {
    assert_eq!(
        render(&smollm2(), &single()),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_conversation() {
    assert_eq!(
        render(&smollm2(), &conversation()),
        "<|im_start|>system\nYou are a terse geography tutor.<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\nParis.<|im_end|>\n\
         <|im_start|>user\nAnd of Italy?\n<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn without_generation_prompt_the_assistant_turn_is_not_opened() {
    assert_eq!(
        smollm2().render(&conversation()[..3], false).unwrap(),
        "<|im_start|>system\nYou are a terse geography tutor.<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\nParis.<|im_end|>\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Llama 3.1 Instruct: BOS, a system header with the knowledge cutoff and a fixed date, trimmed
// messages.

#[test]
fn llama31_single_user_message() {
    assert_eq!(
        render(&llama31(), &single()),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn llama31_conversation() {
    assert_eq!(
        render(&llama31(), &conversation()),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         You are a terse geography tutor.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn llama31_date_string_can_be_passed() {
    let mut extra = serde_json::Map::new();
    extra.insert("date_string".into(), "01 Jan 2025".into());
    let prompt = llama31().render_with(&single(), true, &extra).unwrap();
    assert!(
        prompt.contains("\nToday Date: 01 Jan 2025\n\n<|eot_id|>"),
        "{prompt:?}"
    );
}

/// A tool schema, keys in sorted order (template maps do not keep insertion order).
fn weather_tool() -> serde_json::Map<String, serde_json::Value> {
    let extra = serde_json::json!({
        "tools": [{
            "function": {
                "description": "Get the weather",
                "name": "get_weather",
                "parameters": {
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "type": "object"
                }
            },
            "type": "function"
        }]
    });
    extra.as_object().unwrap().clone()
}

#[test]
fn llama31_tools_go_into_the_first_user_message() {
    let prompt = llama31()
        .render_with(
            &[ChatMessage::user("Weather in Paris?")],
            true,
            &weather_tool(),
        )
        .unwrap();
    // `t | tojson(indent=4)`: Python's `json.dumps(t, indent=4)`.
    let schema = r#"{
    "function": {
        "description": "Get the weather",
        "name": "get_weather",
        "parameters": {
            "properties": {
                "city": {
                    "type": "string"
                }
            },
            "required": [
                "city"
            ],
            "type": "object"
        }
    },
    "type": "function"
}"#;
    let expected = format!(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         <|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
         Given the following functions, please respond with a JSON for a function call \
         with its proper arguments that best answers the given prompt.\n\n\
         Respond in the format {{\"name\": function name, \"parameters\": dictionary of argument \
         name and its value}}.Do not use variables.\n\n{schema}\n\nWeather in Paris?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(prompt, expected);
}

// ---------------------------------------------------------------------------------------------
// Mistral 7B Instruct v0.2: `[INST]` turns, the system message in the first one, strict roles.

#[test]
fn mistral_single_user_message() {
    // The template has no generation prompt: `[/INST]` already hands over to the model.
    assert_eq!(
        render(&mistral(), &single()),
        "<s> [INST] What is the capital of France? [/INST]"
    );
}

#[test]
fn mistral_conversation() {
    assert_eq!(
        render(&mistral(), &conversation()),
        "<s> [INST] You are a terse geography tutor.\n\nWhat is the capital of France? [/INST] \
         Paris.</s> [INST] And of Italy?\n [/INST]"
    );
}

#[test]
fn mistral_rejects_roles_that_do_not_alternate() {
    let messages = [ChatMessage::user("Hello."), ChatMessage::user("Anyone?")];
    let err = mistral().render(&messages, true).unwrap_err();
    let ModelError::ChatTemplate {
        failure,
        line,
        ref message,
        ..
    } = err
    else {
        panic!("expected a chat template error, got {err:?}");
    };
    assert_eq!(failure, ChatTemplateFailure::Raised);
    // `{{- raise_exception(...) }}` is on line 11 of the template.
    assert_eq!(line, Some(11));
    let text = err.to_string();
    assert!(
        message.contains(
            "After the optional system message, conversation roles must alternate \
             user/assistant/user/assistant/..."
        ),
        "{text}"
    );
    assert!(text.contains("line 11"), "{text}");
}

#[test]
fn mistral_rejects_an_assistant_first() {
    let messages = [ChatMessage::assistant("Hi."), ChatMessage::user("Hello.")];
    let err = mistral().render(&messages, true).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ChatTemplate {
                failure: ChatTemplateFailure::Raised,
                ..
            }
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Qwen2.5 Instruct: ChatML with Qwen's default system message; tools in the system turn.

#[test]
fn qwen25_single_user_message() {
    assert_eq!(
        render(&qwen25(), &single()),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn qwen25_conversation() {
    assert_eq!(
        render(&qwen25(), &conversation()),
        "<|im_start|>system\nYou are a terse geography tutor.<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\nParis.<|im_end|>\n\
         <|im_start|>user\nAnd of Italy?\n<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn qwen25_tools_are_listed_with_python_json() {
    let prompt = qwen25()
        .render_with(
            &[ChatMessage::user("Weather in Paris?")],
            true,
            &weather_tool(),
        )
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n\
         # Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
         {\"function\": {\"description\": \"Get the weather\", \"name\": \"get_weather\", \
         \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}}, \
         \"required\": [\"city\"], \"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n\
         <|im_start|>user\nWeather in Paris?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors and environment.

#[test]
fn broken_template_is_a_compile_error_with_its_line() {
    let source = "{% for message in messages %}\n{{ message.content }}\n\
                  {% if message.role == 'user' %}\n{% endfor %}\n";
    let err = ChatTemplate::new(source, None, None).unwrap_err();
    let ModelError::ChatTemplate {
        failure,
        line,
        ref origin,
        ..
    } = err
    else {
        panic!("expected a chat template error, got {err:?}");
    };
    assert_eq!(failure, ChatTemplateFailure::Compile);
    assert_eq!(line, Some(4));
    assert_eq!(origin, "chat template");
    let text = err.to_string();
    assert!(
        text.contains("syntax error at line 4 (`{% endfor %}`)"),
        "{text}"
    );
}

#[test]
fn render_failures_are_typed() {
    let template = ChatTemplate::new("{{ messages[0].content.nope.deeper }}", None, None).unwrap();
    let err = template.render(&single(), true).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ChatTemplate {
                failure: ChatTemplateFailure::Render,
                line: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn transformers_whitespace_and_helpers() {
    // trim_blocks + lstrip_blocks: block lines leave nothing behind; one trailing newline is
    // dropped (keep_trailing_newline off); Python methods and `raise_exception` are available.
    let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n\
                  [{{ m.content.strip().upper() }}|{% if m.content.startswith(' a') %}a{% endif %}|\
                  {{ m.content.split() | join('+') }}]\n    {% endif %}\n{% endfor %}\n";
    let template = ChatTemplate::new(source, None, None).unwrap();
    let out = template
        .render(
            &[ChatMessage::user(" a b "), ChatMessage::system("x")],
            false,
        )
        .unwrap();
    assert_eq!(out, "[A B|a|a+b]\n");
    let date = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", None, None)
        .unwrap()
        .render(&[], false)
        .unwrap();
    assert!(
        date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-',
        "{date}"
    );
    let raised = ChatTemplate::new("{{ raise_exception('no ' ~ messages|length) }}", None, None)
        .unwrap()
        .render(&[], false)
        .unwrap_err();
    assert!(raised.to_string().ends_with(": no 0"), "{raised}");
}

#[test]
fn undefined_bos_renders_empty() {
    // As in transformers, a tokenizer without a BOS leaves `bos_token` undefined.
    let source = "[{{ bos_token }}]{% if eos_token is not defined %}no eos{% endif %}";
    let template = ChatTemplate::new(source, None, None).unwrap();
    assert_eq!(template.render(&[], false).unwrap(), "[]no eos");
}

// ---------------------------------------------------------------------------------------------
// Tokenizers: where the template and the special-token strings come from.

/// A tiny `tokenizer.json` (word level) with the given added special tokens.
fn tokenizer_json(specials: &[&str]) -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("hi".into(), 1.into());
    let mut added = Vec::new();
    for (i, token) in specials.iter().enumerate() {
        let id = 2 + i;
        vocab.insert(token.to_string(), id.into());
        added.push(serde_json::json!({
            "id": id, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// A fresh directory holding `files` (name, contents).
fn checkpoint_dir(name: &str, files: &[(&str, String)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "focusllm-chat-templates-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, contents) in files {
        std::fs::write(dir.join(file), contents).unwrap();
    }
    dir
}

#[test]
fn tokenizer_without_template_says_so() {
    let dir = checkpoint_dir("none", &[("tokenizer.json", tokenizer_json(&[]))]);
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.chat_template(), None);
    let err = tokenizer.chat_prompt("hi").unwrap_err();
    let ModelError::NoChatTemplate { ref reason } = err else {
        panic!("expected NoChatTemplate, got {err:?}");
    };
    assert!(reason.contains("tokenizer_config.json"), "{reason}");
    assert!(
        err.to_string()
            .starts_with("the checkpoint has no chat template"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokenizer_reads_template_and_special_strings_from_its_config() {
    let config = serde_json::json!({
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
        "chat_template": fixture("mistralai-Mistral-7B-Instruct-v0.2.jinja"),
    });
    let dir = checkpoint_dir(
        "config",
        &[
            ("tokenizer.json", tokenizer_json(&["<s>", "</s>"])),
            ("tokenizer_config.json", config.to_string()),
        ],
    );
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.bos_token(), Some("<s>"));
    assert_eq!(tokenizer.eos_token(), Some("</s>"));
    assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (Some(2), Some(3)));
    assert_eq!(
        tokenizer.chat_prompt("hi").unwrap(),
        "<s> [INST] hi [/INST]"
    );
    assert_eq!(
        tokenizer
            .apply_chat_template(&conversation(), true)
            .unwrap(),
        render(&mistral(), &conversation())
    );
    // The origin names the file; the template's own error comes through.
    let err = tokenizer
        .apply_chat_template(&[ChatMessage::assistant("x")], true)
        .unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokenizer_template_list_and_jinja_file() {
    let list = serde_json::json!({
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "DEFAULT {{ messages[0].content }}"},
        ],
    });
    let dir = checkpoint_dir(
        "list",
        &[
            ("tokenizer.json", tokenizer_json(&[])),
            ("tokenizer_config.json", list.to_string()),
        ],
    );
    let path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    assert_eq!(tokenizer.chat_prompt("hi").unwrap(), "DEFAULT hi");
    // A `chat_template.jinja` beside it wins, as in transformers.
    std::fs::write(
        dir.join("chat_template.jinja"),
        "JINJA {{ messages[0].content }}\n",
    )
    .unwrap();
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    assert_eq!(tokenizer.chat_prompt("hi").unwrap(), "JINJA hi");
    // A list without `default` is no usable template.
    let list = serde_json::json!({"chat_template": [{"name": "rag", "template": "R"}]});
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), list.to_string()).unwrap();
    let err = Tokenizer::from_file(&path)
        .unwrap()
        .chat_prompt("hi")
        .unwrap_err();
    assert!(
        matches!(&err, ModelError::NoChatTemplate { reason } if reason.contains("`rag`")),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_template_fails_when_used_not_when_loaded() {
    let config = serde_json::json!({"chat_template": "{% if %}"});
    let dir = checkpoint_dir(
        "malformed",
        &[
            ("tokenizer.json", tokenizer_json(&[])),
            ("tokenizer_config.json", config.to_string()),
        ],
    );
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.chat_template(), Some("{% if %}"));
    for _ in 0..2 {
        let err = tokenizer.chat_prompt("hi").unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::ChatTemplate {
                    failure: ChatTemplateFailure::Compile,
                    line: Some(1),
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // A replacement template can be supplied.
    let fixed = tokenizer.with_chat_template("<{{ messages[0].content }}>");
    assert_eq!(fixed.chat_prompt("hi").unwrap(), "<hi>");
    std::fs::remove_dir_all(&dir).unwrap();
}

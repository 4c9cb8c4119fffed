//! SmolLM2's chat template (ChatML), rendered as text for [`crate::tokenizer::Tokenizer::encode`].
//!
//! The template of SmolLM2-Instruct:
//!
//! ```text
//! {% for message in messages %}
//!   {% if loop.first and messages[0]['role'] != 'system' %}
//!     <|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n
//!   {% endif %}
//!   <|im_start|>{{ role }}\n{{ content }}<|im_end|>\n
//! {% endfor %}
//! {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}
//! ```

use crate::error::{EngineError, Result};

/// The system prompt SmolLM2 gets when the conversation does not start with one.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Roles the template accepts.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Renders `messages` with SmolLM2's ChatML template, ending with the generation prompt
/// `<|im_start|>assistant\n`. A default system prompt is prepended when the first message is not
/// a system message. Roles other than system/user/assistant are refused.
pub fn chat_prompt(messages: &[ChatMessage]) -> Result<String> {
    if let Some(bad) = messages.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
        return Err(EngineError::InvalidInput(format!(
            "unknown chat role '{}' (expected one of: system, user, assistant)",
            bad.role
        )));
    }
    let mut out = String::with_capacity(128 + messages.iter().map(|m| m.content.len() + 32).sum::<usize>());
    if messages.first().is_none_or(|m| m.role != "system") {
        push_turn(&mut out, "system", DEFAULT_SYSTEM_PROMPT);
    }
    for m in messages {
        push_turn(&mut out, &m.role, &m.content);
    }
    out.push_str("<|im_start|>assistant\n");
    Ok(out)
}

/// The prompt for a single user message (default system prompt, then the user turn, then the
/// generation prompt).
pub fn user_prompt(text: &str) -> String {
    let mut out = String::with_capacity(160 + text.len());
    push_turn(&mut out, "system", DEFAULT_SYSTEM_PROMPT);
    push_turn(&mut out, "user", text);
    out.push_str("<|im_start|>assistant\n");
    out
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: &str =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

    #[test]
    fn single_user_message_gets_default_system_prompt() {
        let p = chat_prompt(&[ChatMessage::user("Hi!")]).unwrap();
        assert_eq!(p, format!("{SYS}<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"));
        assert_eq!(user_prompt("Hi!"), p);
    }

    #[test]
    fn explicit_system_prompt_replaces_default() {
        let msgs = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("2+2?"),
            ChatMessage::assistant("4"),
            ChatMessage::user("And 3+3?"),
        ];
        let p = chat_prompt(&msgs).unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
             <|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn system_message_later_does_not_suppress_default() {
        let p = chat_prompt(&[ChatMessage::user("a"), ChatMessage::system("b")]).unwrap();
        assert!(p.starts_with(SYS));
        assert!(p.contains("<|im_start|>system\nb<|im_end|>\n"));
    }

    #[test]
    fn empty_conversation_is_system_plus_generation_prompt() {
        assert_eq!(chat_prompt(&[]).unwrap(), format!("{SYS}<|im_start|>assistant\n"));
    }

    #[test]
    fn unknown_role_is_refused_by_name() {
        let err = chat_prompt(&[ChatMessage::user("x"), ChatMessage::new("tool", "y")]).unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput(_)));
        assert!(err.to_string().contains("'tool'"), "{err}");
        // Roles are case-sensitive, as in the template.
        assert!(chat_prompt(&[ChatMessage::new("User", "x")]).is_err());
    }
}

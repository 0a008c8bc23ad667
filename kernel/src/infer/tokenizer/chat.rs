//! The ChatML chat template (SmolLM2's): `<|im_start|>role\ncontent<|im_end|>\n` per message,
//! then `<|im_start|>assistant\n` to ask for the reply.

#![forbid(unsafe_code)]

use alloc::string::String;

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name in the template.
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: &'a str,
}

/// SmolLM2's system prompt when the conversation has none.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Marks the start of a message.
pub const MESSAGE_START: &str = "<|im_start|>";
/// Marks the end of a message; the model emits it when its reply is done.
pub const MESSAGE_END: &str = "<|im_end|>";

/// Renders `messages` as ChatML, adding `default_system` first when the conversation has no
/// system message, and ending with the assistant prompt.
pub fn render(messages: &[Message<'_>], default_system: Option<&str>) -> String {
    let mut text = String::new();
    let mut append = |role: Role, content: &str| {
        for part in [MESSAGE_START, role.name(), "\n", content, MESSAGE_END, "\n"] {
            text.push_str(part);
        }
    };
    if let Some(system) = default_system
        && messages.first().is_none_or(|message| message.role != Role::System)
    {
        append(Role::System, system);
    }
    for message in messages {
        append(message.role, message.content);
    }
    text.push_str(MESSAGE_START);
    text.push_str("assistant\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml() {
        let messages = [Message { role: Role::User, content: "Hi" }];
        assert_eq!(
            render(&messages, Some("Be brief")),
            "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(render(&messages, None), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }
}

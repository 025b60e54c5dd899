"""Chat data: rows with a 'messages' list of {"role": ..., "content": ...} (the format of most instruction datasets),
trained through the tokenizer's chat template with the loss on the assistant's turns only."""

from .errors import UsageError

MESSAGES = "messages"
ROLES = ("system", "user", "assistant", "tool")

# For a tokenizer without a chat template of its own (GPT-2's): each turn as its role on a line, then its text and
# the end-of-text token, so that the model learns to stop at the end of its turn. Saved with the tokenizer, so that
# generation from the fine-tuned model uses the same one.
PLAIN_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + "
                  "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
PLAIN_TEMPLATE_SHOWN = "<|role|>, a line break, the text, the end-of-text token, a line break"


def message_problem(messages):
    """What is wrong with one row's messages (a fix included), or None."""
    if not isinstance(messages, list) or not messages:
        return "'messages' is not a list of messages; write [{\"role\": \"user\", \"content\": \"...\"}, ...]"
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"message {number} is not an object; write {{\"role\": \"user\", \"content\": \"...\"}}"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return (f"message {number} has role {role!r}; use one of {', '.join(ROLES)}" if role is not None
                    else f"message {number} has no 'role'; give it one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            return f"message {number} ({role}) has no 'content' text; give it one (an empty string is allowed)"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message: nothing to learn from; add the reply to learn, or drop the row"
    return None


def chat_problems(rows, flag, where):
    """One line for the first malformed row of `rows`, ((where in the file, messages), ...), or []."""
    for place, messages in rows:
        problem = message_problem(messages)
        if problem:
            return [f"{flag} {where}: {place}: {problem}"]
    return []


def use_a_template(tokenizer):
    """The tokenizer keeps its own chat template; one without gets PLAIN_TEMPLATE (saved with it)."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_TEMPLATE


def template_note(tokenizer):
    """The start-up summary's line on the template the chat data is written with."""
    if tokenizer.chat_template == PLAIN_TEMPLATE:
        return (f"chat: the tokenizer has no chat template of its own, so a plain one is used and saved with the "
                f"model ({PLAIN_TEMPLATE_SHOWN})")
    return "chat: written with the tokenizer's own chat template"


def render(tokenizer, messages, generation_prompt=False):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages):
    """(the conversation as the template writes it, [(start, end) character span of each assistant turn]): a turn
    runs from the end of the text before it (with the prompt for a reply) to the end of the text through it."""
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True) if i else _empty_start(tokenizer)
        through = render(tokenizer, messages[:i + 1])
        if not (text.startswith(before) and text.startswith(through)):
            raise UsageError("the tokenizer's chat template does not write a conversation turn by turn (a turn "
                             "reads differently once later turns follow), so the assistant's turns cannot be found "
                             "in it; train on prompt/completion columns instead")
        spans.append((len(before), len(through)))
    return text, spans


def _empty_start(tokenizer):
    """What a template writes before a conversation that opens with the assistant (a default system turn, say)."""
    try:
        return render(tokenizer, [], generation_prompt=True)
    except Exception:  # a template that needs a first message: nothing before it
        return ""


def chat_tokens(tokenizer, messages):
    """(token ids of the whole conversation, labels: each assistant token's id, -100 for every other token)."""
    text, spans = assistant_spans(tokenizer, [{"role": m["role"], "content": m["content"]} for m in messages])
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [token if any(start <= begin < end for start, end in spans) else -100
              for token, (begin, _) in zip(ids, encoded["offset_mapping"])]
    return ids, labels

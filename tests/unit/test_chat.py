"""Chat data through a chat template: the loss falls on the assistant's turns (their text and the end of the turn)
and on nothing else, with the tokenizer's own template or the plain one; malformed messages are named."""

import pytest
from transformers import AutoTokenizer

from clmkit.chat import PLAIN_TEMPLATE, chat_tokens, message_problem, use_a_template
from clmkit.errors import UsageError

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TALK = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "Who's there?"},
        {"role": "assistant", "content": "Nay, answer me."}, {"role": "user", "content": "Long live the king!"},
        {"role": "assistant", "content": "Bernardo?"}]


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def learned(tokenizer, messages):
    ids, labels = chat_tokens(tokenizer, messages)
    assert len(ids) == len(labels) and all(label in (-100, token) for token, label in zip(ids, labels))
    return tokenizer.decode(ids), tokenizer.decode([token for token, label in zip(ids, labels) if label != -100])


def test_the_plain_template_for_a_tokenizer_without_one(tokenizer):
    assert not tokenizer.chat_template
    use_a_template(tokenizer)
    assert tokenizer.chat_template == PLAIN_TEMPLATE
    text, taught = learned(tokenizer, TALK)
    assert text.startswith("<|system|>\nSpeak verse.<|endoftext|>\n<|user|>\nWho's there?<|endoftext|>\n")
    assert taught == "Nay, answer me.<|endoftext|>\nBernardo?<|endoftext|>\n"


def test_the_tokenizers_own_template_is_kept(tokenizer):
    tokenizer.chat_template = CHATML
    use_a_template(tokenizer)
    assert tokenizer.chat_template == CHATML
    _, taught = learned(tokenizer, TALK)
    assert taught == "Nay, answer me.<|im_end|>\nBernardo?<|im_end|>\n"


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    # Writes how many turns follow into the first: a turn's text changes as the conversation grows.
    tokenizer.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UsageError, match="does not write a conversation turn by turn"):
        chat_tokens(tokenizer, TALK)


@pytest.mark.parametrize("messages,problem", [
    ([], "not a list of messages"),
    ("hello", "not a list of messages"),
    ([{"role": "user", "content": "hi"}, "yes"], "message 2 is not an object"),
    ([{"role": "human", "content": "hi"}], "message 1 has role 'human'; use one of system, user, assistant, tool"),
    ([{"content": "hi"}], "message 1 has no 'role'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant"}], "message 2 (assistant) has no 'content' text"),
    ([{"role": "user", "content": "hi"}], "no assistant message"),
])
def test_malformed_messages_are_named(messages, problem):
    assert problem in message_problem(messages)


def test_good_messages_pass():
    assert message_problem(TALK) is None

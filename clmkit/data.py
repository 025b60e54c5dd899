"""Text files in, fixed-length token sequences out."""

import math
import os
import time
from itertools import chain

from datasets import DatasetDict

from .chat import MESSAGES, chat_problems, chat_tokens, template_note, use_a_template
from .errors import UsageError, raise_if_any
from .machine import first_process, hub_offline
from .progress import phase_done

# File extension -> the `datasets` builder that reads it.
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}


def builder_for(path: str) -> str:
    return BUILDERS.get(os.path.splitext(path)[1].lower(), "")


def context_length(config) -> int:
    """Longest sequence the model's position embeddings allow."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def choose_block_size(data_args, config) -> int:
    limit = context_length(config)
    if data_args.block_size is None:
        return min(1024, limit)
    if data_args.block_size > limit:
        raise UsageError(f"--block_size {data_args.block_size}: the model's context is {limit} tokens; "
                         f"use --block_size {limit} or less")
    if data_args.block_size < 2:
        raise UsageError(f"--block_size {data_args.block_size}: must be at least 2")
    return data_args.block_size


def load_raw_texts(data_args, cache_dir=None, training=True, evaluating=True, validation_only=False):
    """(DatasetDict with 'train' and/or 'validation', {split: TEXT or PAIRS}). A split of running text has one
    column, 'text'; a split of prompt/completion examples has 'prompt' and 'completion'. Each file is read with its
    own builder, so a .txt training file and a .csv validation file go together. A run that only evaluates reads the
    train file only to hold its tail out, when there is no validation file. --dataset_name reads a dataset instead
    (load_named_dataset). validation_only: the validation text alone, for a run that streams its training text
    (nothing is held out of a stream)."""
    from datasets import load_dataset

    if data_args.dataset_name:
        raw = load_named_dataset(data_args, cache_dir, evaluating, validation_only)
        plain = set()
    else:
        files = {}
        if data_args.train_file and (training or not data_args.validation_file):
            files["train"] = data_args.train_file
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        raw = {}
        plain = {split for split, path in files.items() if builder_for(path) == "text"}  # one 'text' column
        for split, path in files.items():
            started = time.time()
            raw[split] = load_dataset(builder_for(path), data_files={split: path}, cache_dir=cache_dir,
                                      **read_options(path))[split]
            phase_done(f"Reading {path}", raw[split], started, "rows")
    kinds = {}
    for split, dataset in raw.items():
        raw[split], kinds[split] = in_columns_of_its_kind(dataset, split, data_args, split in plain)
    return DatasetDict(raw), kinds


def read_options(path):
    """load_dataset's options for a data file. A .txt file is one document, read whole with its line breaks and blank
    lines (CRLF and CR become \n, a byte order mark is dropped): the one row texttocsv.py makes of it. The builder's
    default, a document per line, would put an end-of-text token after every line and teach the model to stop after
    one."""
    return {"sample_by": "document", "encoding": "utf-8-sig"} if builder_for(path) == "text" else {}


def source(split, data_args):
    """(flag, what it names) for the text of `split`, for messages about it."""
    if data_args.dataset_name:
        return "--dataset_name", f"{data_args.dataset_name} ({split} split)"
    if split == "validation" and data_args.validation_file:
        return "--validation_file", data_args.validation_file
    return "--train_file", data_args.train_file


def in_columns_of_its_kind(dataset, split, data_args, plain_text=False):
    """(the split with the columns of its kind, renamed: 'text', or 'prompt' and 'completion'; its kind).
    plain_text: read from a .txt file, whose one column is 'text' whatever --text_column says."""
    if plain_text:
        return dataset, TEXT
    flag, where = source(split, data_args)
    columns = dataset.column_names
    kind = file_kind(columns, data_args)
    if kind == PAIRS:
        names = {data_args.prompt_column: "prompt", data_args.completion_column: "completion"}
    elif kind == CHAT:
        names = {MESSAGES: MESSAGES}
        if data_args.dataset_name:  # a file's rows were checked before anything loaded
            raise_if_any(chat_problems(((f"row {row}", messages) for row, messages
                                        in enumerate(dataset[MESSAGES], 1)), flag, where))
    elif data_args.text_column in columns:
        names = {data_args.text_column: "text"}
    elif data_args.dataset_name and columns:
        # A dataset of the Hub without a 'text' column: its first column, as upstream run_clm.py takes it.
        names = {columns[0]: "text"}
        if first_process() and split == "train":  # said once: the splits of a dataset share their columns
            print(f"notice: {flag} {where}: no '{data_args.text_column}' column; training on its first column, "
                  f"'{columns[0]}' (--text_column names another)", flush=True)
    else:
        raise UsageError(f"{flag} {where}: no '{data_args.text_column}' column (it has: {', '.join(columns)}); "
                         f"name the column with --text_column or make the file with texttocsv.py")
    dataset = dataset.select_columns(list(names))
    return dataset.rename_columns({old: new for old, new in names.items() if old != new}), kind


def load_named_dataset(data_args, cache_dir=None, evaluating=True, validation_only=False):
    """--dataset_name (and --dataset_config_name) through datasets.load_dataset: a dataset of the Hub (from the
    datasets cache when offline) or a local folder of data files; a folder written by save_to_disk through
    load_from_disk. {'train': ..., 'validation': ...}: its validation split, or, where it has none, the first
    --validation_split_percentage % of its train rows, as upstream run_clm.py holds them out."""
    from datasets import Dataset, load_dataset, load_from_disk

    name, config = data_args.dataset_name, data_args.dataset_config_name
    started = time.time()
    try:
        if os.path.isdir(name) and any(os.path.isfile(os.path.join(name, marker))
                                       for marker in ("dataset_dict.json", "state.json")):
            loaded = load_from_disk(name)
            loaded = {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
        elif validation_only:
            try:
                loaded = {"validation": load_dataset(name, config, cache_dir=cache_dir, split="validation")}
            except ValueError as err:
                if "split" not in str(err).lower():
                    raise
                loaded = {}  # said below
        else:
            loaded = dict(load_dataset(name, config, cache_dir=cache_dir))
    except Exception as err:  # the datasets library's many ways of not finding it: one line, not its traceback
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = " (offline: HF_HUB_OFFLINE=1 reads only the datasets cache)" if hub_offline() else ""
        raise UsageError(f"--dataset_name {name}{f' --dataset_config_name {config}' if config else ''}: cannot "
                         f"be read{offline}: {reason}; give a dataset of the Hub, a local folder of data files, or "
                         f"--train_file") from None
    if validation_only:
        if "validation" not in loaded:
            raise UsageError(f"--dataset_name {name}: no 'validation' split, and a stream (--streaming) holds "
                             "nothing out to evaluate on; drop --do_eval, or --streaming (the first "
                             "--validation_split_percentage percent of the rows are then held out)")
        return {"validation": loaded["validation"]}
    if "train" not in loaded:
        raise UsageError(f"--dataset_name {name}: no 'train' split (it has: {', '.join(loaded)}); "
                         "give a dataset with one, or --train_file")
    for split in ("train", "validation"):
        if split in loaded:
            phase_done(f"Reading {name} ({split} split)", loaded[split], started, "rows")
    if "validation" in loaded:
        return {"train": loaded["train"], "validation": loaded["validation"]}
    train = loaded["train"]
    held_out = round(len(train) * data_args.validation_split_percentage / 100)
    if not held_out or not evaluating:  # nothing to evaluate on: every row trains
        return {"train": train}
    return {"train": train.select(range(held_out, len(train))), "validation": train.select(range(held_out))}


TEXT, PAIRS, CHAT = "text", "prompt/completion", "chat"


def file_kind(columns, data_args):
    """TEXT; PAIRS for a file with the prompt and completion columns and no text column; CHAT for one with a
    'messages' column and no text column."""
    if data_args.text_column in columns:
        return TEXT
    if data_args.prompt_column in columns and data_args.completion_column in columns:
        return PAIRS
    return CHAT if MESSAGES in columns else TEXT


def json_records(path):
    """(where, record) for each record of a JSON Lines file ('line N') or of a file holding one JSON list
    ('item N'); ValueError says where it breaks."""
    import json

    with open(path, encoding="utf-8") as f:
        one_list = f.read(4096).lstrip().startswith("[")
        f.seek(0)
        if one_list:
            try:
                records = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {err.lineno}, column {err.colno}: {err.msg}") from None
            yield from ((f"item {number}", record) for number, record in enumerate(records, 1))
            return
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"line {number}", json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as err:
                    raise ValueError(f"line {number}, column {err.colno}: {err.msg}") from None


def row_place(split, data_args, row):
    """Where row `row` (from 0) of a split is, for a message: a file's line or item, a dataset's row."""
    flag, where = source(split, data_args)
    if flag != "--dataset_name" and builder_for(where) == "json":
        return next(place for number, (place, _) in enumerate(json_records(where)) if number == row)
    return f"row {row + 1}"


MAP_BATCH = 1000  # documents per batch when cutting blocks: each batch's remainder is dropped


def _map_options(data_args):
    return {
        "batched": True,
        "batch_size": MAP_BATCH,
        "num_proc": data_args.preprocessing_num_workers,
        "load_from_cache_file": not data_args.overwrite_cache,
    }


def tokenize_texts(raw, kinds, tokenizer, data_args, training_args):
    """Running text: each non-empty document as token ids ('input_ids'), ending in the end-of-text token.
    Prompt/completion: each example with a completion as 'prompt_ids' and 'completion_ids' (the completion ending in
    the end-of-text token), kept apart so that only the completion counts in the loss. Chat: each conversation as
    'chat_ids' and 'chat_labels' (clmkit/chat.py), and its 'row'."""
    if CHAT in kinds.values():
        use_a_template(tokenizer)
    tokens = {}
    with training_args.main_process_first(desc="tokenizing"):
        for split, dataset in raw.items():
            function, unit = token_function(kinds[split], tokenizer)
            tokens[split] = _mapped(dataset, function, "Tokenizing", split, unit, data_args,
                                    with_indices=kinds[split] == CHAT)
    return DatasetDict(tokens)


TOKEN_COLUMNS = {TEXT: ["input_ids"], PAIRS: ["prompt_ids", "completion_ids"], CHAT: ["chat_ids", "chat_labels", "row"]}


def token_function(kind, tokenizer):
    """(the batched function that tokenizes text of `kind`, what it counts)."""
    eos = tokenizer.eos_token_id
    # Whole documents are longer than the model's context on purpose: they are cut into blocks next. Transformers'
    # warning that such a sequence "will result in indexing errors" would only alarm.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True

    def documents(batch):
        texts = [t for t in batch["text"] if t]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        # The end-of-text token marks where one document stops and the next begins.
        return {"input_ids": [seq + [eos] for seq in ids]}

    def pairs(batch):
        kept = [(p or "", c) for p, c in zip(batch["prompt"], batch["completion"]) if c]  # nothing to learn without
        prompts = tokenizer([p for p, _ in kept], add_special_tokens=False)["input_ids"]
        completions = tokenizer([c for _, c in kept], add_special_tokens=False)["input_ids"]
        return {"prompt_ids": prompts, "completion_ids": [seq + [eos] for seq in completions]}

    def chats(batch, rows):
        tokens = [chat_tokens(tokenizer, messages) for messages in batch[MESSAGES]]
        return {"chat_ids": [ids for ids, _ in tokens], "chat_labels": [labels for _, labels in tokens], "row": rows}

    return {TEXT: (documents, "texts"), PAIRS: (pairs, "examples"), CHAT: (chats, "conversations")}[kind]


def sequence_function(kind, block_size, pad, separate_examples):
    """The batched function that makes sequences of block_size tokens of tokenized text of `kind`."""
    if kind == PAIRS:
        return lambda batch: pad_pairs(batch, block_size, pad)
    if kind == CHAT:
        return lambda batch: pad_chats(batch, block_size, pad)
    if separate_examples:
        return lambda batch: pad_examples(batch, block_size, pad)
    return lambda batch: cut_blocks(batch, block_size)


def _mapped(dataset, function, desc, split, unit, data_args, with_indices=False):
    """One pass of `function` over a split's batches (read back from the datasets cache where it ran before)."""
    started = time.time()
    result = dataset.map(function, remove_columns=dataset.column_names, desc=desc, with_indices=with_indices,
                         **_map_options(data_args))
    phase_done(f"{desc} ({split})", result, started, unit)
    return result


def make_sequences(tokens, kinds, tokenizer, block_size, data_args, training_args):
    """Tokenized files -> (training sequences of exactly block_size tokens, {split: a line on its examples}).
    Running text is cut into blocks (or, with --separate_examples, each document truncated or padded to one);
    each prompt/completion example is one sequence, truncated or padded, its loss on the completion alone."""
    pad = tokenizer.pad_token_id

    for split, dataset in tokens.items():
        if kinds[split] == CHAT:
            raise_if_any(too_long_chats(dataset, split, block_size, data_args))

    def to_sequences(kind):
        return sequence_function(kind, block_size, pad, data_args.separate_examples)

    with training_args.main_process_first(desc="making sequences"):
        sequences = DatasetDict({split: _mapped(dataset, to_sequences(kinds[split]),
                                                f"Making sequences of {block_size} tokens", split, "sequences",
                                                data_args)
                                 for split, dataset in tokens.items()})
    notes = {}
    if CHAT in kinds.values():
        notes["template"] = template_note(tokenizer)
    for split, dataset in sequences.items():
        if kinds[split] == PAIRS:
            notes[split] = describe_pairs(dataset, split, block_size)
        elif kinds[split] == CHAT:
            notes[split] = (f"{len(dataset):,} {split} conversations, one a sequence; "
                            f"{sum(dataset['loss_tokens']):,} tokens of the assistant's turns count in the loss")
        elif data_args.separate_examples:
            report_cut_examples(dataset, split, block_size, training_args)
    counts = ("cut_tokens", "loss_tokens")  # read above; the model takes none of them
    return DatasetDict({split: dataset.remove_columns([c for c in counts if c in dataset.column_names])
                        for split, dataset in sequences.items()}), notes


def report_cut_examples(dataset, split, block_size, training_args):
    """--separate_examples cuts every example to one block: say how much text that leaves unseen (with one csv row
    per file, almost all of it)."""
    cut = dataset["cut_tokens"]
    examples_cut = sum(1 for n in cut if n)
    if examples_cut and training_args.process_index == 0:
        kept = examples_cut * block_size  # a cut example keeps one whole block
        print(f"notice: --separate_examples: {examples_cut:,} of {len(dataset):,} {split} examples are longer "
              f"than the block of {block_size} tokens and are cut to it; {sum(cut):,} of their "
              f"{sum(cut) + kept:,} tokens are never seen (split long texts into rows, e.g. texttocsv.py "
              "--split paragraph, or drop --separate_examples)", flush=True)


def describe_pairs(dataset, split, block_size):
    """One line: how many prompt/completion examples, how many were cut to the block, the tokens in the loss."""
    cut = sum(1 for n in dataset["cut_tokens"] if n)
    in_loss = sum(dataset["loss_tokens"])
    return (f"{len(dataset):,} {split} prompt/completion examples, {cut:,} of them cut to the block of {block_size} "
            f"tokens; {in_loss:,} completion tokens count in the loss")


def pad_pairs(batch, block_size, pad_id):
    """Each prompt followed by its completion, truncated, then right-padded; only completion tokens are labels."""
    out = {"input_ids": [], "attention_mask": [], "labels": [], "cut_tokens": [], "loss_tokens": []}
    for prompt, completion in zip(batch["prompt_ids"], batch["completion_ids"]):
        ids = (prompt + completion)[:block_size]
        labels = ([-100] * len(prompt) + completion)[:block_size]
        pad = block_size - len(ids)
        out["cut_tokens"].append(max(0, len(prompt) + len(completion) - block_size))
        # The model predicts position i from the tokens before it: the first position is never a target.
        out["loss_tokens"].append(sum(1 for label in labels[1:] if label != -100))
        out["input_ids"].append(ids + [pad_id] * pad)
        out["attention_mask"].append([1] * len(ids) + [0] * pad)
        out["labels"].append(labels + [-100] * pad)
    return out


def too_long_chats(tokens, split, block_size, data_args):
    """A conversation longer than the block would lose its end, often the reply it is there to teach: one line
    naming the first, its place and the fix."""
    flag, where = source(split, data_args)
    for ids, row in zip(tokens["chat_ids"], tokens["row"]):
        if len(ids) > block_size:
            return [f"{flag} {where}: {row_place(split, data_args, row)}: the conversation is {len(ids):,} tokens, "
                    f"longer than the block of {block_size}; raise --block_size (up to the model's context), or "
                    "split it into shorter conversations"]
    return []


def pad_chats(batch, block_size, pad_id):
    """Each conversation (no longer than the block) right-padded; only the assistant's tokens are labels."""
    out = {"input_ids": [], "attention_mask": [], "labels": [], "cut_tokens": [], "loss_tokens": []}
    for ids, labels, row in zip(batch["chat_ids"], batch["chat_labels"], batch["row"]):
        pad = block_size - len(ids)
        if pad < 0:  # found as a stream reaches it (read whole, too_long_chats has said so before training)
            raise UsageError(f"row {row + 1}: the conversation is {len(ids):,} tokens, longer than the block of "
                             f"{block_size}; raise --block_size (up to the model's context), or split it into "
                             "shorter conversations")
        out["input_ids"].append(ids + [pad_id] * pad)
        out["attention_mask"].append([1] * len(ids) + [0] * pad)
        out["labels"].append(labels + [-100] * pad)
        out["cut_tokens"].append(0)
        out["loss_tokens"].append(sum(1 for label in labels[1:] if label != -100))
    return out


def cut_blocks(batch, block_size):
    """Concatenate the batch's documents and cut them into full blocks; the remainder is dropped."""
    ids = list(chain.from_iterable(batch["input_ids"]))
    usable = len(ids) // block_size * block_size
    blocks = [ids[i:i + block_size] for i in range(0, usable, block_size)]
    return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks], "labels": blocks}


def pad_examples(batch, block_size, pad_id):
    """Each example on its own: truncated, then right-padded; padding is masked out of the loss with -100. That is
    a prompt/completion example without a prompt."""
    return pad_pairs({"prompt_ids": [[] for _ in batch["input_ids"]], "completion_ids": batch["input_ids"]},
                     block_size, pad_id)


def streamed_train_set(data_args, tokenizer, block_size, cache_dir=None):
    """--streaming: the training sequences as an IterableDataset, made from the text as training reads it, in the
    order of the file or dataset. A rerun after a stop skips the batches its checkpoint trained on and goes on with
    the next: no example is trained on twice, none is left out."""
    from datasets import load_dataset

    if data_args.dataset_name:
        stream = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir,
                              split="train", streaming=True)
        plain = False
    else:
        path = data_args.train_file
        plain = builder_for(path) == "text"
        stream = load_dataset(builder_for(path), data_files={"train": path}, cache_dir=cache_dir, split="train",
                              streaming=True, **read_options(path))
    if stream.column_names is None:  # a json stream's columns are known once its first row is read
        stream = stream.select_columns(list(next(iter(stream))))
    stream, kind = in_columns_of_its_kind(stream, "train", data_args, plain)
    if kind == CHAT:
        use_a_template(tokenizer)
    function, _ = token_function(kind, tokenizer)
    tokens = stream.map(function, batched=True, batch_size=MAP_BATCH, remove_columns=stream.column_names,
                        with_indices=kind == CHAT)
    sequences = tokens.map(sequence_function(kind, block_size, tokenizer.pad_token_id, data_args.separate_examples),
                           batched=True, batch_size=MAP_BATCH, remove_columns=TOKEN_COLUMNS[kind])
    if kind != TEXT or data_args.separate_examples:
        sequences = sequences.remove_columns(["cut_tokens", "loss_tokens"])
    if data_args.max_train_samples is not None:
        sequences = sequences.take(data_args.max_train_samples)
    return sequences


def split_sequences(sequences, data_args, block_size, tokens=None, evaluating=True, kinds=None):
    """Train and eval sets, holding out the last sequences when there is no validation file and the run evaluates
    (without --do_eval nothing is held out, and the eval set is None).

    `tokens` (the tokenized documents, before cutting) lets a too-short file be reported with its token count
    and a --block_size that would work; `kinds` says which splits are prompt/completion examples."""
    hold_out = evaluating and "validation" not in sequences
    problems = [too_short(split, data_args, block_size, len(sequences[split]), tokens, hold_out,
                          examples=data_args.separate_examples or (kinds or {}).get(split) == PAIRS)
                for split in sequences if len(sequences[split]) < sequences_needed(split, data_args, hold_out)]
    if problems:
        raise UsageError(*problems)
    train = sequences.get("train")  # None when only evaluating on --validation_file
    if "validation" in sequences:
        evaluation = sequences["validation"]
    elif not hold_out:
        evaluation = None
    else:
        # The tail, not a random sample: neighbouring blocks of one text would leak into training.
        held_out = held_out_count(len(train), data_args.validation_split_percentage)
        evaluation = train.select(range(len(train) - held_out, len(train)))
        train = train.select(range(len(train) - held_out))
    if data_args.max_train_samples is not None and train is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples is not None and evaluation is not None:
        evaluation = evaluation.select(range(min(len(evaluation), data_args.max_eval_samples)))
    return train, evaluation


def held_out_count(n_sequences, percentage):
    return max(1, math.ceil(n_sequences * percentage / 100))


def sequences_needed(split, data_args, hold_out=True):
    """One, or for a train split that must also give up the evaluation sequences, enough to keep some."""
    if split == "validation" or data_args.validation_file or not hold_out:
        return 1
    return next((n for n in range(2, 10_000) if held_out_count(n, data_args.validation_split_percentage) < n),
                10_000)


def too_short(split, data_args, block_size, have, tokens, hold_out=True, examples=False):
    """One line: how much text the split has, and what would make enough sequences of it. `examples`: each example
    is one sequence (--separate_examples, prompt/completion files)."""
    flag, path = source(split, data_args)
    needed = sequences_needed(split, data_args, hold_out)
    hold_out = f"too few to hold {data_args.validation_split_percentage}% out for evaluation and train on the rest"
    if examples:
        if have == 0:
            return f"{flag} {path}: no text in it (every example is empty); put text in it"
        return f"{flag} {path}: only {have} example(s), {hold_out}; give --validation_file or more examples"
    if tokens is None:
        size, fix = "", "use a smaller --block_size or more text"
    else:
        batches = batch_token_counts(tokens[split])
        works = largest_block_size(batches, needed, below=block_size)
        size = f"{sum(batches):,} tokens, "
        fix = f"use --block_size {works} or less, or more text" if works else "put more text in it"
    if have == 0:
        also = "" if needed == 1 else f" ({needed} blocks: to train on and to hold out; or give --validation_file)"
        return f"{flag} {path}: {size}shorter than one block of {block_size} tokens; {fix}{also}"
    return (f"{flag} {path}: {size}only {have} sequence(s) of {block_size} tokens, {hold_out}; "
            f"give --validation_file, or {fix}")


def batch_token_counts(documents):
    """Tokens in each batch of documents that cut_blocks sees."""
    lengths = [len(ids) for ids in documents["input_ids"]]
    return [sum(lengths[i:i + MAP_BATCH]) for i in range(0, len(lengths), MAP_BATCH)]


def largest_block_size(batch_tokens, needed, below):
    """The largest block size under `below` that cuts at least `needed` sequences, or None (not even 2 does)."""
    def blocks(size):
        return sum(n // size for n in batch_tokens)

    if blocks(2) < needed:
        return None
    low, high = 2, below - 1  # blocks() only falls as the size grows
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if blocks(middle) >= needed else (low, middle - 1)
    return low

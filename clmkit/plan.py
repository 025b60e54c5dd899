"""What a run needs, estimated before it starts from the model's shapes alone (built on the meta device, no
weights): GPU memory, host RAM and disk against what this machine has, a verdict, and the one change most likely to
make it fit. plan_report.py puts it in words.

Each figure is a peak in bytes. N is the parameter count, T = micro-batch x block size (tokens per GPU and forward
pass), h the hidden size, L the layers, a the attention heads, s the block size, V the vocabulary. Each term says
where its size comes from: the code that allocates it (DeepSpeed 0.19, PyTorch 2.13, Transformers 5), or a
measurement; docs/plan-calibration.md has the measurements and how each constant was fitted.
"""

import copy
import dataclasses
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from .data import context_length
from .errors import UsageError
from .adamw8bit import QUANTIZED_BLOCK, quantized
from .in_backward import in_flight_bytes
from .loading import checkpointing_on, optim_name, training_dtype
from .loss import chunk_tokens_for
from .machine import GiB, Machine, gib, gpu_here, local_ranks, probe_machine, same_on_every_process
from . import modes
from .modes import MODES, PARITY_BAR, contradictions
from .saving import host_copy_bytes

# Resident memory of one worker before any model state: Python and the libraries imported, the data tokenized, the
# Trainer built (the tiny test model's peak host RSS, whose states are kilobytes).
WORKER_BASELINE = int(0.52 * GiB)
# The deepspeed launcher: its runner (`deepspeed ...`) and the launch.py it starts, 0.24 GiB each.
LAUNCHER_BASELINE = int(0.48 * GiB)
# What a CUDA worker adds: the CUDA build of torch, the CUDA context, cuBLAS and NCCL. Fitted to host peaks of GPU
# runs (docs/plan-calibration.md): the classic recipe's and the 7B runs' with the state on the host, whose peaks
# beyond their state and one saved shard were 1.8-2.9 GiB; a bare CUDA tensor already makes a process about 2 GB
# resident.
CUDA_BASELINE = int(3.0 * GiB)
# The peak allocated is what the estimate gives; PyTorch's caching allocator needs some room on top (fragmentation).
GPU_MARGIN = 1.1
# Host estimates within 10% over the available RAM are "tight" (the run goes ahead); beyond that the run stops.
HOST_MARGIN = 1.1

# Activations one transformer layer saves for its backward pass, per token: (c, k) means c x h + k x a x s elements
# of the activation dtype, measured with torch.autograd.graph.saved_tensors_hooks on small configs of each
# architecture. GPT-2 keeps the most per h: its tanh-GELU in Python keeps four 4h tensors, dropout keeps 1-byte
# masks. GPT-Neo computes attention in fp32. A model on PyTorch's scaled_dot_product_attention keeps no a x s scores
# on a GPU (the flash and memory-efficient kernels keep only their output and log-sum-exp); on the CPU its math
# fallback keeps twice the eager amount.
LAYER_ACTIVATIONS = {"gpt2": (33, 3), "gpt_neo": (42, 1), "gptj": (28, 3)}
OTHER_ACTIVATIONS = (42, 3)  # an architecture not measured: the largest of those
# Recomputing one layer in the backward pass holds its activations and, briefly, part of their gradients, which are
# freed as the layer's backward proceeds: 1.2 x one layer (fitted where this term sets the peak).
RECOMPUTE_TRANSIENT = 1.2
# Outside the layers: the embedding output, the final norm and the LM head's input, about 3h per token.
EDGE_ACTIVATIONS = 3
# The loss over T x V logits peaks in the backward pass of the cross-entropy: the fp32 log-probabilities it saved,
# their gradient and the gradient of the fp32 logits, 3 x 4 bytes each (the 16-bit logits are freed by then).
LOSS_BYTES = 12


def pow2(n_bytes: int) -> int:
    """PyTorch's pinned host allocator (CachingHostAllocator) rounds each allocation up to a power of two."""
    return 1 << (int(n_bytes) - 1).bit_length() if n_bytes > 0 else 0


# ---------------------------------------------------------------- the model, from its config alone


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    n_params: int  # distinct parameters (tied embeddings once)
    largest_layer: int  # parameters of the largest single module: what ZeRO-3 gathers at once
    largest_param: int  # elements of the largest parameter (the embedding, for these models)
    sizes: tuple  # (elements, dimensions) of every distinct parameter
    hidden: int
    layers: int
    heads: int
    vocab: int
    sdpa: bool  # attention through torch's scaled_dot_product_attention


def _first(config, *names, default=0):
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return default


def model_shape(config) -> ModelShape:
    """The shapes of a causal LM built from `config`, without allocating its weights (meta device)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = list(model.parameters())  # shared (tied) parameters come once
    largest_layer = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(
        model_type=config.model_type,
        n_params=sum(p.numel() for p in params),
        largest_layer=largest_layer,
        largest_param=max(p.numel() for p in params),
        sizes=tuple((p.numel(), p.dim()) for p in params),
        hidden=_first(text, "hidden_size", "n_embd", "d_model"),
        layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"),
        heads=_first(text, "num_attention_heads", "n_head", "num_heads", default=1),
        vocab=_first(text, "vocab_size"),
        sdpa=getattr(model.config, "_attn_implementation", None) == "sdpa",
    )





@dataclass(frozen=True)
class Setup:
    micro_batch: int
    accumulation: int
    block_size: int
    precision: str = "fp32"  # fp16, bf16 or fp32
    checkpointing: bool = True
    chunk_tokens: int = 0  # --chunked_loss: tokens per loss chunk (0: the whole micro-batch at once)
    use_cpu: bool = False
    # The workers hold a CUDA context: not --use_cpu, and a GPU is here (or assumed by CLM_ASSUME_GPU_GIB). Without
    # one, Transformers trains on the CPU, and a worker's RAM is the CPU baseline only.
    cuda: bool = True
    deepspeed: str = ""  # the --deepspeed config; "" is plain PyTorch
    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    pin_memory: bool = False
    reduce_bucket: int = 0  # elements; 0 is "auto" (h x h, as Transformers fills it)
    overlap_comm: bool = False
    prefetch_bucket: int = 0  # ZeRO-3; 0 is "auto" (0.9 h x h)
    persistence_threshold: int = 0  # ZeRO-3; 0 is "auto" (10 h)
    ranks: int = 1  # processes (GPUs) on this node
    nodes: int = 1
    launcher: bool = False  # started by a launcher, whose own process is counted too
    checkpoints: bool = True  # checkpoints hold the optimizer state (not --save_only_model / --save_strategy no)
    weights: str = "fp32"  # what a weight is loaded in on the CPU, fp32 unless --dtype or the checkpoint says
    optim: str = "adamw_torch"  # --optim: without DeepSpeed, what Adam's state costs on the GPU
    pretrained: bool = False  # weights read from --model_name_or_path (not built from a config)
    mode: str = ""  # the mode's name (clmkit/modes.py)
    in_backward: bool = False  # --optimizer_in_backward: each gradient freed as soon as its weight steps
    state_on_host: bool = False  # --optimizer_state_on_host: the optimizer state in pinned host RAM

    @property
    def fp16_mode(self):
        return not self.deepspeed and self.weights == "fp16"

    @property
    def loads_to_gpu(self):
        """Pretrained 16-bit weights trained without DeepSpeed are read straight onto the GPU (clmkit/loading.py)."""
        return self.pretrained and not self.deepspeed and self.weights in ("fp16", "bf16") and self.cuda \
            and not self.use_cpu

    @property
    def precision_label(self):
        """--fp16/--bf16 (or fp32); without DeepSpeed, also the weights' own dtype where --dtype makes it 16-bit."""
        if self.deepspeed or self.weights == "fp32":
            return self.precision
        if self.fp16_mode:
            return "fp16 weights, loss scale and stochastic rounding (the fp16 mode)"
        return f"{self.weights} weights" + (f" ({self.precision} autocast)" if self.precision != "fp32" else "")

    @property
    def load_bytes(self):
        return 4 if self.weights == "fp32" else 2

    @property
    def half(self):
        return self.precision in ("fp16", "bf16")

    @property
    def batch(self):
        return batch_text(self.micro_batch, self.accumulation, self.ranks * self.nodes, self.block_size,
                          self.use_cpu, self.nodes)

    @property
    def engine(self):
        if not self.deepspeed:
            return "plain PyTorch (no DeepSpeed)"
        where = {(True, True): " with parameters and optimizer in CPU RAM",
                 (True, False): " with the optimizer in CPU RAM"}.get((self.offload_optimizer, self.offload_param), "")
        return f"DeepSpeed ZeRO-{self.stage}{where}"


def batch_text(micro, accumulation, world, block_size, use_cpu=False, nodes=1):
    """What one optimizer step sees: the micro-batch of each GPU (each process with --use_cpu), accumulated,
    summed over all of them."""
    unit = ("process", "processes") if use_cpu else ("GPU", "GPUs")
    devices = f"{world} {unit[world != 1]}" + (f" ({nodes} nodes x {world // nodes})" if nodes > 1 else "")
    sequences = micro * accumulation * world
    return (f"{micro} sequences per {unit[0]} x {accumulation} accumulation x {devices} = {sequences:,} sequences = "
            f"{sequences * block_size:,} tokens per optimizer step")



def _int_or_auto(value):
    return int(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0



def setup_from_args(training_args, block_size, ds_config=None, model_args=None, config=None,
                    vocab=50257) -> Setup:
    """The Setup the flags and the DeepSpeed config (a dict, already read) describe; vocab: the LM head's rows
    (ModelShape.vocab), which size the loss's chunks."""
    zero = (ds_config or {}).get("zero_optimization") or {}
    optimizer = zero.get("offload_optimizer") or {}
    params = zero.get("offload_param") or {}
    ranks, nodes, launcher = local_ranks()
    save_strategy = getattr(training_args.save_strategy, "value", training_args.save_strategy)
    stage = int(zero.get("stage", 0)) if training_args.deepspeed else 0
    chunk = chunk_tokens_for(vocab) if getattr(training_args, "chunked_loss", False) else 0
    deepspeed = training_args.deepspeed
    in_backward = bool(getattr(training_args, "optimizer_in_backward", False)) and not deepspeed
    return Setup(
        micro_batch=training_args.per_device_train_batch_size,
        accumulation=training_args.gradient_accumulation_steps,
        block_size=block_size,
        precision="bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        checkpointing=checkpointing_on(training_args),
        chunk_tokens=chunk,
        use_cpu=bool(training_args.use_cpu),
        cuda=gpu_here(),
        deepspeed=(deepspeed if isinstance(deepspeed, str) else "the --deepspeed config") if deepspeed else "",
        stage=stage,
        offload_optimizer=optimizer.get("device", "none") in ("cpu", "nvme"),
        offload_param=params.get("device", "none") in ("cpu", "nvme"),
        pin_memory=bool(optimizer.get("pin_memory", False)),
        reduce_bucket=_int_or_auto(zero.get("reduce_bucket_size", 5e8)),
        overlap_comm=bool(zero.get("overlap_comm", stage == 3)),
        prefetch_bucket=_int_or_auto(zero.get("stage3_prefetch_bucket_size", zero.get("prefetch_bucket_size", 5e7))),
        persistence_threshold=_int_or_auto(zero.get("stage3_param_persistence_threshold",
                                                    zero.get("param_persistence_threshold", 1e5))),
        ranks=ranks,
        nodes=nodes,
        launcher=launcher,
        checkpoints=save_strategy != "no" and not training_args.save_only_model,
        weights=_load_dtype(model_args, config, training_args),
        optim=optim_name(training_args),
        pretrained=bool(getattr(model_args, "model_name_or_path", None)),
        mode=getattr(training_args, "mode", ""),
        in_backward=in_backward,
        state_on_host=in_backward and bool(getattr(training_args, "optimizer_state_on_host", False)),
    )


def _load_dtype(model_args, config, training_args=None):
    """fp32, fp16 or bf16: what a weight is loaded in, by the loader's own rule (clmkit/loading.py:training_dtype);
    where that leaves the checkpoint's dtype, a pretrained model's config says it, else fp32."""
    dtype = training_dtype(model_args, training_args) if model_args is not None else None
    if dtype in (None, "auto") and getattr(model_args, "model_name_or_path", None):
        dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return dtype_name(dtype)


def dtype_name(dtype):
    """torch.bfloat16, "bfloat16", ... -> bf16; fp16 likewise; anything else fp32."""
    text = str(dtype or "")
    return "bf16" if "bfloat16" in text else "fp16" if "float16" in text else "fp32"


# ---------------------------------------------------------------- the estimate


@dataclass
class Needs:
    gpu_states: int  # model states on each GPU (in host RAM with --use_cpu)
    gpu_buffers: int  # DeepSpeed's GPU-side staging and communication buckets
    kept: int  # activations kept through the forward pass
    transient: int  # the largest extra at once in the backward pass: the loss, or one recomputed layer
    loss: int
    layer: int
    host_baseline: int
    host_optimizer: int  # the offloaded optimizer state (Adam's m and v)
    host_pinned: int  # offload buffers (pinned, with "pin_memory": true on a GPU)
    pinned_parts: dict
    host_loading: int  # the model as built or loaded on the CPU, before it moves to the GPU
    host_saving: int  # the weights copied to the CPU while model.safetensors is written
    disk_checkpoint: int  # one checkpoint-<step> folder
    disk_weights: int  # the final model
    deepspeed_host: int = 0  # DeepSpeed's own cold estimate of the host model states (0: not used)
    deepspeed_gpu: int = 0
    on_gpu: bool = True  # False with --use_cpu: states and activations live in host RAM

    @property
    def activations(self):
        return self.kept + self.transient

    @property
    def gpu(self):
        return self.gpu_states + self.gpu_buffers + self.activations

    @property
    def host_training(self):
        on_cpu = 0 if self.on_gpu else self.gpu
        return self.host_optimizer + self.host_pinned + on_cpu + self.host_saving

    @property
    def host(self):
        return self.host_baseline + max(self.host_loading, self.host_training)


def deepspeed_estimate(shape, setup):
    """(host, GPU) bytes of the model states by DeepSpeed's cold estimators: the non-printing functions behind
    estimate_zero2_model_states_mem_needs_all_cold and estimate_zero3_model_states_mem_needs_all_cold."""
    if setup.stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        host, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=shape.n_params, largest_layer_params=shape.largest_layer, num_gpus_per_node=setup.ranks,
            num_nodes=setup.nodes, cpu_offload=setup.offload_optimizer, cpu_offload_params=setup.offload_param,
            zero_init=True)  # Transformers builds the model inside deepspeed.zero.Init under ZeRO-3
    else:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        host, gpu = estimate_zero2_model_states_mem_needs(
            total_params=shape.n_params, num_gpus_per_node=setup.ranks, num_nodes=setup.nodes,
            cpu_offload=setup.offload_optimizer)
    return int(host), int(gpu)


def zero2_offload_buffers(shape, setup, weight_bytes):
    """Host buffers of ZeRO-1/2 optimizer offload (runtime/zero/stage_1_and_2.py), each rank holding its 1/ranks
    partition of each of the Trainer's two parameter groups (with and without weight decay). With "pin_memory": true
    on a GPU each is page-locked by tensor.pin_memory(), which rounds it up to a power of two: GPT-2 XL's 6.2 GB of
    fp32 master weights take 8 GiB."""
    rounded = pow2 if setup.pin_memory and not setup.use_cpu else int
    decay = sum(n for n, dims in shape.sizes if dims >= 2)
    groups = [g for g in (decay, shape.n_params - decay) if g]
    parts = dict.fromkeys(("fp32 master weights", "fp32 gradients", "weights copy", "staging", "accumulation"), 0)
    for group in groups:
        partition = -(-group // setup.ranks)
        parts["fp32 master weights"] += setup.ranks * rounded(4 * partition)  # single_partition_of_fp32_groups
        parts["fp32 gradients"] += setup.ranks * rounded(4 * partition)  # its .grad (initialize_optimizer_states)
        # param_buffer_of_bit16_for_cpu_offload_groups: the updated weights in the training dtype, on their way back
        parts["weights copy"] += setup.ranks * rounded(weight_bytes * partition)
    # temp_grad_buffer_for_cpu_offload: one largest parameter's gradient
    parts["staging"] = setup.ranks * rounded(weight_bytes * shape.largest_param)
    if setup.accumulation > 1:  # accumulated_grads_in_cpu: one buffer per parameter between micro-batches
        parts["accumulation"] = sum(rounded(weight_bytes * n) for n, _ in shape.sizes)
    return sum(parts.values()), parts


def activation_bytes(shape, setup, act_bytes):
    """(kept through the forward pass, largest transient of the backward, the loss's share, one layer's)."""
    tokens = setup.micro_batch * setup.block_size
    per_h, scores = LAYER_ACTIVATIONS.get(shape.model_type, OTHER_ACTIVATIONS)
    if shape.sdpa:
        scores = 2 * scores if setup.use_cpu else 0
    layer = (per_h * shape.hidden + scores * shape.heads * setup.block_size) * tokens * act_bytes
    edges = EDGE_ACTIVATIONS * shape.hidden * tokens * act_bytes
    # --chunked_loss (clmkit/loss.py) recomputes the logits chunk by chunk in the backward pass
    loss = LOSS_BYTES * min(tokens, setup.chunk_tokens or tokens) * shape.vocab
    if setup.checkpointing:
        # each layer's input is kept; in the backward one layer at a time is recomputed (its activations and
        # some of their gradients), or the loss runs, whichever is larger, on top
        return (shape.layers * shape.hidden * tokens * act_bytes + edges, max(loss, RECOMPUTE_TRANSIENT * layer),
                loss, layer)
    return shape.layers * layer + edges, loss, loss, layer


# Bytes of optimizer state a parameter for the low-bit AdamWs --optim offers (m and v, plus their block scales)
OPTIMIZER_STATE_BYTES = {"adamw_torch_8bit": 2, "adamw_torch_4bit": 1, "adamw_bnb_8bit": 2, "adamw_8bit": 2,
                         "paged_adamw_8bit": 2}


def unquantized_elements(shape: ModelShape) -> int:
    """Elements of the weights whose state torchao does not quantize (clmkit/adamw8bit.py's rule)."""
    return sum(n for n, _ in shape.sizes if not quantized(n))


def host_state_bytes(shape, setup, optimizer_state, weight_bytes):
    """Adam's m and v in host RAM with --optimizer_state_on_host, pinned at their own size (clmkit/in_backward.py
    registers each with CUDA, with none of the pinned allocator's rounding to powers of two). torchao's 8-bit state
    adds an fp32 scale per 256 elements of m and of v; a tensor it does not quantize keeps m and v in the weights'
    dtype."""
    n = shape.n_params
    if setup.optim not in OPTIMIZER_STATE_BYTES:
        return optimizer_state * n
    plain = unquantized_elements(shape)
    quantized = n - plain
    return optimizer_state * quantized + 2 * 4 * quantized // QUANTIZED_BLOCK + 2 * weight_bytes * plain


# A low-bit AdamW steps one parameter at a time (torchao), in the backward or after it: its working memory is the
# fp32 temporaries of one weight, 4 bytes x the largest parameter (measured on GPT-J 6B's shapes stepped in the
# backward, micro-batch 1: 0.85 GiB over states and activations, against 0.77 GiB for its 206M-element embedding).
STEP_WORKING_BYTES = 4
# Without DeepSpeed, 16-bit weights under the Trainer's autocast (the bf16 mode, with or without the step in the
# backward) keep twice the 16-bit layer inputs the count below gives. Fitted, cause not traced, to the measured peaks
# on an H200 (docs/plan-calibration.md): GPT-2 XL's shapes at micro-batch 8 and 16, Qwen2.5-1.5B's at 8,
# Llama-3.2-3B's at 8 and GPT-J 6B's at 1 and 2, all within 11%. The fp16 mode, without autocast, keeps none.
AUTOCAST_KEPT = 2


def estimate(shape: ModelShape, setup: Setup) -> Needs:
    n = shape.n_params
    act_bytes = 2 if setup.half else 4
    # DeepSpeed casts the model to fp16/bf16; plain PyTorch trains the weights in the dtype they were loaded in
    # (fp32 with autocast, or bf16 weights with --dtype bfloat16)
    weight_bytes = act_bytes if setup.deepspeed else setup.load_bytes
    optimizer_state = OPTIMIZER_STATE_BYTES.get(setup.optim, 2 * weight_bytes)  # AdamW: m and v like the weights
    deepspeed_host = deepspeed_gpu = 0
    if setup.deepspeed:
        deepspeed_host, deepspeed_gpu = deepspeed_estimate(shape, setup)
        gpu_states = deepspeed_gpu
        if setup.stage < 3 and weight_bytes == 4:  # the estimators assume 16-bit weights and gradients
            gpu_states += 2 * n * (1 if setup.offload_optimizer else 2)
        if setup.stage == 1 and setup.offload_optimizer:
            # ZeRO-1 keeps every gradient on the GPU until the step (the ZeRO-2 estimator counts none there):
            # measured +0.9 GiB for a 0.45B-parameter model in fp16
            gpu_states += weight_bytes * n
        buffers = deepspeed_gpu_buffers(shape, setup, weight_bytes)
    else:
        # weights, gradients, Adam's m and v (16 bytes a parameter in fp32; 6 for bf16 weights with an 8-bit
        # AdamW); under autocast of fp32 weights a 16-bit copy of every weight, cached in the forward pass and kept
        # for the backward
        copies = 2 * n if setup.half and weight_bytes == 4 else 0
        # Stepped in the backward, a gradient lives until its weight steps: the largest (a tied embedding's, whose
        # uses add up over the whole backward) is counted here, a layer's with the activations it is made from.
        gradients = shape.largest_param if setup.in_backward else n
        # With the state in host RAM (--optimizer_state_on_host), the GPU holds one parameter's at a time, copied in
        # for its step: counted with that step's working memory below.
        states = 0 if setup.state_on_host else n
        gpu_states = weight_bytes * n + optimizer_state * states + weight_bytes * gradients + copies
        # On several GPUs DDP's buckets are the gradients themselves (trainer.py), so they add nothing here.
        if setup.fp16_mode and setup.optim in OPTIMIZER_STATE_BYTES:
            # m and v in fp32 (8 bytes, not 2) where torchao does not quantize (GPT-2's embedding: 50257 rows do
            # not split into blocks); the step runs one parameter at a time, and its largest transient is the norm
            # pass's fp32 copy of the largest gradient (clmkit/fp16_adamw.py)
            gpu_states += 6 * unquantized_elements(shape)
            buffers = 4 * shape.largest_param
        elif setup.optim not in OPTIMIZER_STATE_BYTES:
            buffers = 0
        else:
            buffers = STEP_WORKING_BYTES * shape.largest_param
    kept, transient, loss, layer = activation_bytes(shape, setup, act_bytes)
    if not setup.deepspeed and not setup.fp16_mode and setup.half and weight_bytes == 2 and setup.checkpointing:
        kept += (AUTOCAST_KEPT - 1) * shape.layers * shape.hidden * setup.micro_batch * setup.block_size * act_bytes
    if setup.in_backward and not setup.deepspeed:
        # The largest weight steps as the backward ends, when the activations are gone: only what its step needs
        # beyond them counts.
        buffers = max(0, buffers - kept - transient)
    if setup.state_on_host and not setup.deepspeed and setup.optim in OPTIMIZER_STATE_BYTES:
        # The state copied in ahead of the weights' steps, beside the activations (clmkit/in_backward.py)
        buffers += max(in_flight_bytes(), optimizer_state * shape.largest_param)

    worker = WORKER_BASELINE + (CUDA_BASELINE if setup.cuda and not setup.use_cpu else 0)
    baseline = setup.ranks * worker + (LAUNCHER_BASELINE if setup.launcher else 0)
    # DeepSpeedCPUAdam's exp_avg and exp_avg_sq: fp32, ordinary (pageable) memory, partitioned over the ranks
    optimizer = 8 * n if setup.offload_optimizer else 0
    if setup.state_on_host and not setup.deepspeed:
        # (A resume holds the loaded state beside it for a moment: for the 8-bit state about the size of the
        # weights' copy that saving counts.)
        optimizer = host_state_bytes(shape, setup, optimizer_state, weight_bytes)
    pinned, parts = 0, {}
    if setup.deepspeed and setup.stage == 3 and (setup.offload_optimizer or setup.offload_param):
        # DeepSpeed's estimate (16-bit parameters, fp32 master weights, gradients and Adam state, x1.5 for buffers)
        pinned = max(0, deepspeed_host - optimizer)
        parts = {"parameters, fp32 master weights and gradients (DeepSpeed's estimate, x1.5 for buffers)": pinned}
    elif setup.deepspeed and setup.offload_optimizer:
        pinned, parts = zero2_offload_buffers(shape, setup, weight_bytes)
    if setup.deepspeed and setup.stage == 3:
        loading = setup.ranks * 4 * shape.largest_layer  # zero.Init partitions each module as it is built
    elif setup.loads_to_gpu:  # tensor by tensor onto the GPU
        loading = setup.ranks * setup.load_bytes * shape.largest_param
    else:  # every rank builds (or loads) the whole model on the CPU first; initialising a tensor copies it once
        loading = setup.ranks * setup.load_bytes * (n + shape.largest_param)
    # model.safetensors: safetensors copies every GPU tensor of a file to the CPU and keeps them until the file is
    # written. Without DeepSpeed the weights go in shards (clmkit/saving.py); the Trainer's DeepSpeed save writes one
    # file, and ZeRO-3 gathers a 16-bit copy on the CPU first. On the CPU the weights are written where they are.
    saving = weight_bytes * n if (not setup.use_cpu or setup.stage == 3) else 0
    if saving and not setup.deepspeed:
        saving = host_copy_bytes(saving, weight_bytes * shape.largest_param)

    # A checkpoint: model.safetensors in the training dtype, DeepSpeed's module states (the weights again, except
    # under ZeRO-3) and the fp32 master weights with Adam's m and v (12 bytes); plain PyTorch: fp32 weights and
    # optimizer.pt (8 bytes). GPT-2 XL under ZeRO-2 in fp16: 16 bytes a parameter, 23.2 GiB (`du -sh`: 24G).
    final = weight_bytes * n
    if not setup.checkpoints:
        checkpoint = final
    elif setup.deepspeed:
        checkpoint = (1 if setup.stage == 3 else 2) * weight_bytes * n + 12 * n
    else:
        checkpoint = (weight_bytes + optimizer_state) * n
    return Needs(gpu_states=gpu_states, gpu_buffers=buffers, kept=kept, transient=transient, loss=loss, layer=layer,
                 host_baseline=baseline, host_optimizer=optimizer, host_pinned=pinned, pinned_parts=parts,
                 host_loading=loading, host_saving=saving, disk_checkpoint=checkpoint, disk_weights=final,
                 deepspeed_host=deepspeed_host, deepspeed_gpu=deepspeed_gpu, on_gpu=not setup.use_cpu)


def deepspeed_gpu_buffers(shape, setup, weight_bytes):
    """GPU memory DeepSpeed holds beside the model states: gradient buckets (two with overlap_comm) and, with the
    optimizer offloaded, a staging buffer of the largest parameter; ZeRO-3 also prefetches parameters and keeps the
    small ones (under the persistence threshold) on the GPU."""
    h2 = shape.hidden * shape.hidden
    bucket = (setup.reduce_bucket or h2) * weight_bytes * (2 if setup.overlap_comm else 1)
    if setup.stage == 3:
        threshold = setup.persistence_threshold or 10 * shape.hidden
        persistent = sum(n for n, _ in shape.sizes if n < threshold)
        return bucket + ((setup.prefetch_bucket or int(0.9 * h2)) + persistent) * weight_bytes
    return bucket + (shape.largest_param * weight_bytes if setup.offload_optimizer else 0)


# ---------------------------------------------------------------- this machine



# ---------------------------------------------------------------- the plan and its verdict


FITS, TIGHT, OVER = "fits", "tight", "does not fit"


class Plan:
    def __init__(self, shape: ModelShape, setup: Setup, machine: Machine, output_dir: str, given=None):
        self.shape, self.setup, self.machine, self.output_dir = shape, setup, machine, output_dir
        self.given = given or {}  # the flags given on the command line: a change to another mode drops its own
        self.how = ""  # how the run's mode was chosen, in a few words (make_plan)
        self.changes = []  # what the mode does differently from what the user asked, one phrase each
        self.flags = {}  # the flags the run takes on for its mode (settle_mode)
        self.problems = []  # why the run cannot train in its mode, one line each
        self.needs = estimate(shape, setup)
        self.status = self._status(self.needs, setup)

    # -- verdicts

    def _status(self, needs, setup):
        """{resource: FITS, TIGHT or OVER}; GPU absent with --use_cpu or where no GPU is known."""
        status = {}
        free = self.machine.gpu_free
        if not setup.use_cpu and free is not None:
            status["GPU"] = FITS if needs.gpu * GPU_MARGIN <= free else TIGHT if needs.gpu <= free else OVER
        ram = self.machine.ram
        status["host RAM"] = FITS if needs.host <= ram else TIGHT if needs.host <= HOST_MARGIN * ram else OVER
        status["disk"] = FITS if needs.disk_checkpoint <= self.machine.disk else OVER
        return status

    @property
    def verdict(self):
        values = self.status.values()
        return OVER if OVER in values else TIGHT if TIGHT in values else FITS

    def _alternatives(self):
        """(what to change, the setup after it), in the order to try them: least disruptive first, then the other
        modes that can run here, fastest first, then the DeepSpeed config's own levers."""
        s = self.setup
        out = [("drop --no_gradient_checkpointing", dataclasses.replace(s, checkpointing=True))] \
            if not s.checkpointing else []
        out.append(("", s))
        for mode in modes_by_speed():
            if mode.name != s.mode and not self.can_run(mode):
                micro, accumulation = self.splits(mode)[0]
                out.append((f"--mode {mode.name} ({mode.title})" + self._dropping(mode),
                            mode_setup(mode, s, self.shape.vocab, micro, accumulation)))
        if s.deepspeed and s.stage < 3:
            out.append(("--deepspeed ds_config_zero3.json (ZeRO-3: parameters and optimizer in CPU RAM)",
                        dataclasses.replace(s, deepspeed="ds_config_zero3.json", stage=3, offload_optimizer=True,
                                            offload_param=True, pin_memory=True, reduce_bucket=0, overlap_comm=True,
                                            prefetch_bucket=0, persistence_threshold=0)))
        if s.deepspeed and s.offload_optimizer and s.pin_memory and s.stage < 3 and not s.use_cpu:
            out.append((f'"pin_memory": false under "offload_optimizer" in {s.deepspeed} (no pinned buffers, which '
                        "PyTorch rounds up to powers of two)", dataclasses.replace(s, pin_memory=False)))
        if s.deepspeed and s.offload_optimizer and s.stage < 3:
            out.append((f'no "offload_optimizer" in {s.deepspeed} (the optimizer state on the GPU)',
                        dataclasses.replace(s, offload_optimizer=False, pin_memory=False)))
        return out

    def _dropping(self, mode):
        """', without --X ...' for the given flags that spell this run's mode and contradict `mode`."""
        clashes = [key for key, _, _ in contradictions(mode, self.given, not self.setup.use_cpu and self.setup.cuda)]
        return f" without {', '.join('--' + key for key in clashes)}" if clashes else ""

    def machine_words(self):
        """This machine in a few words: 'a 16.0 GiB GPU with bf16 and 64.0 GiB of RAM'."""
        free = self.machine.gpu_free
        gpu = f"a {gib(free)} GPU {'with' if self.machine.bf16 else 'without'} bf16" if free is not None else "the GPU"
        return f"{gpu} and {gib(self.machine.ram)} of RAM"

    def can_run(self, mode) -> str:
        """'' where this machine and run can train in `mode`; else why not, in a few words."""
        s = self.setup
        if mode.needs_bf16 and not s.use_cpu and not self.machine.bf16:
            return "this GPU has no bf16"
        if mode.one_process and s.ranks * s.nodes > 1:
            return "one GPU only"
        return ""

    def splits(self, mode):
        """(micro-batch, accumulation) to try `mode` at, keeping this run's sequences per optimizer step: the run's
        own split first, then smaller micro-batches with more accumulation; one micro-batch for a mode that cannot
        accumulate."""
        s = self.setup
        if mode.whole_batch:
            return [(s.micro_batch * s.accumulation, 1)]
        return [(m, s.micro_batch * s.accumulation // m) for m in range(s.micro_batch, 0, -1) if s.micro_batch % m == 0]

    def verdict_of(self, setup):
        status = self._status(estimate(self.shape, setup), setup)
        values = [status.get(key, FITS) for key in ("GPU", "host RAM")]
        return OVER if OVER in values else TIGHT if TIGHT in values else FITS

    def modes(self):
        """[(mode, its Setup at the first split that fits (else the run's own), its verdict in words)] of each way the
        tool trains, on this machine's GPU, at this run's sequences a step."""
        rows = []
        for mode in modes_by_speed():
            why_not = self.can_run(mode)
            setups = [mode_setup(mode, self.setup, self.shape.vocab, micro, accumulation)
                      for micro, accumulation in self.splits(mode)]
            setup = next((s for s in setups if self.verdict_of(s) == FITS), setups[0])
            if why_not:
                rows.append((mode, setup, f"cannot run: {why_not}"))
                continue
            needs = estimate(self.shape, setup)
            status = self._status(needs, setup)
            verdict = OVER if OVER in status.values() else TIGHT if TIGHT in status.values() else FITS
            rows.append((mode, setup, f"{verdict}: GPU {gib(needs.gpu)} ({status.get('GPU', '?')}), host RAM "
                                      f"{gib(needs.host)} ({status['host RAM']}), {setup.micro_batch} x "
                                      f"{setup.accumulation}"))
        return rows

    def choice(self, allowed=None):
        """(mode, its Setup) of the fastest mode whose GPU and host RAM fit (else the fastest that is tight), among the
        modes that keep within the measured parity and are `allowed` (names; None: any); None when none can."""
        rows = [(mode, setup) for mode, setup, verdict in self.modes()
                if not verdict.startswith("cannot") and mode.parity is not None and abs(mode.parity) <= PARITY_BAR
                and (allowed is None or mode.name in allowed)]
        for wanted in (FITS, TIGHT):
            for mode, setup in rows:
                if self.verdict_of(setup) == wanted:
                    return mode, setup
        return None

    def _fits_compute(self, setup):
        return self.verdict_of(setup) == FITS

    def change(self):
        """The one change most likely to make the GPU and host RAM fit (and disk, if that is short); '' if none is
        needed."""
        changes = []
        if any(self.status.get(key, FITS) != FITS for key in ("GPU", "host RAM")):
            changes.append(self.compute_change())
        if self.status["disk"] != FITS:
            changes.append(self.disk_change())
        return "; and ".join(changes)

    def _candidates(self):
        """(what to change, the setup after it): each alternative at its own micro-batch, then at smaller ones with
        more accumulation, so that the sequences per optimizer step stay the same."""
        s = self.setup
        fewer = []  # the run's mode stepped in the backward at a smaller micro-batch: fewer sequences a step, last
        for what, alternative in self._alternatives():
            own = alternative.micro_batch
            total = alternative.micro_batch * alternative.accumulation
            if alternative.in_backward and what == "":  # it cannot accumulate: one micro-batch holds the step
                for micro in range(own - 1, 0, -1):
                    batch = (f"--per_device_train_batch_size {micro} ({micro} sequence{'s' * (micro > 1)} a step "
                             f"instead of {total}: stepped in the backward, the mode cannot accumulate)")
                    fewer.append((", plus ".join(part for part in (what, batch) if part),
                                  dataclasses.replace(alternative, micro_batch=micro, accumulation=1)))
            for micro in [m for m in range(own, 0, -1) if own % m == 0]:
                if what == "" and micro == s.micro_batch:
                    continue
                if alternative.in_backward and micro != own:
                    break
                candidate = dataclasses.replace(alternative, micro_batch=micro, accumulation=total // micro)
                batch = "" if (micro, candidate.accumulation) == (s.micro_batch, s.accumulation) or \
                    alternative.in_backward else (
                    f"--per_device_train_batch_size {micro} --gradient_accumulation_steps {candidate.accumulation} "
                    f"(the same {s.micro_batch * s.accumulation} sequences a step per GPU)")
                yield ", plus ".join(part for part in (what, batch) if part), candidate
        yield from fewer

    def largest_micro_batches(self, most=64):
        """(the most sequences a micro-batch may hold in this run's mode with the GPU fitting, the most with it
        tight); 0 for not one."""
        largest = {FITS: 0, TIGHT: 0}
        for micro in range(1, most + 1):
            setup = dataclasses.replace(self.setup, micro_batch=micro)
            status = self._status(estimate(self.shape, setup), setup).get("GPU", FITS)
            if status == OVER:
                break
            for verdict in ((FITS, TIGHT) if status == FITS else (TIGHT,)):
                largest[verdict] = micro
        return largest[FITS], largest[TIGHT]

    def compute_change(self):
        for what, candidate in self._candidates():
            if self._fits_compute(candidate):
                return what
        needs = self.needs
        if self.status.get("GPU", FITS) != FITS and self.status["host RAM"] == FITS:
            return f"no single change fits this GPU: it needs about {gib(needs.gpu * GPU_MARGIN)} free"
        # the least RAM any change needs with the GPU fitting, else as it is
        ram, what = needs.host, ""
        for change, alternative in self._candidates():
            candidate = estimate(self.shape, alternative)
            if self._status(candidate, alternative).get("GPU", FITS) == FITS and candidate.host < ram:
                ram, what = candidate.host, change
        gpu = f" and {gib(needs.gpu * GPU_MARGIN)} free on each GPU" if self.status.get("GPU", FITS) != FITS else ""
        text = f"no single change fits this machine: it needs at least {gib(needs.host)} of RAM{gpu}"
        return text + (f", or {gib(ram)} of RAM with {what}" if what else "")

    def disk_change(self):
        short = self.needs.disk_checkpoint - self.machine.disk
        text = f"free {gib(short)} more or give an --output_dir on a bigger disk"
        if self.setup.checkpoints:
            text += (f", or add --save_only_model (about {gib(self.needs.disk_weights)} a checkpoint, but no "
                     "resuming from it)")
        return text


def modes_by_speed():
    """The modes in the order `auto` prefers them: fastest measured first (GPT-2 XL's shapes on an H200 capped at
    16 GiB, docs/benchmark*.md); fp32, never measured against them, last."""
    return sorted(MODES, key=lambda mode: -(mode.tokens_per_s or 0))


def mode_setup(mode, s: Setup, vocab: int, micro=None, accumulation=None) -> Setup:
    """The Setup of `mode` at the batch of `s` (or at micro x accumulation): its own memory terms (modes.py)."""
    fields = dict(mode.setup)
    chunked = fields.pop("chunked", False)
    if mode.precision == "half":
        precision = s.precision if s.half else "fp16" if s.cuda and not s.use_cpu else "fp32"
        fields.update(precision=precision, weights=precision)
    return dataclasses.replace(s, mode=mode.name, chunk_tokens=chunk_tokens_for(vocab) if chunked else s.chunk_tokens,
                               micro_batch=micro or s.micro_batch, accumulation=accumulation or s.accumulation,
                               **fields)


def model_shape_without_deepspeed(config, training_args):
    """model_shape(config), with Transformers' process-wide DeepSpeed config hidden: under ZeRO-3 it would build even
    a meta-device model through deepspeed.zero.Init, which wants a distributed setup."""
    if not training_args.deepspeed:
        return model_shape(config)
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        return model_shape(config)
    finally:
        if getattr(training_args, "hf_deepspeed_config", None) is not None:
            set_hf_deepspeed_config(training_args.hf_deepspeed_config)


def make_plan(config, tokenizer, model_args, training_args, block_size, ds_config, resumed=None, settled=None):
    """The run's Plan from the model's shapes on the meta device, the flags, the block size (None: the model's
    context), the DeepSpeed config (a dict, or None) and this machine, in the mode the run trains in: the one it
    names, the one its checkpoint was written in, the one its flags spell, or the one `auto` chooses (settle_mode).
    resumed: what the checkpoint a rerun goes on from was written with (checkpoints.written_with), or None.
    settled: the plan that settled the mode whose flags the run has since taken on; its model shapes and machine
    are this one's, so that the run is planned on the figures its mode was chosen by.
    A config no causal LM class is registered for is a UsageError."""
    block_size = block_size or context_length(config)  # its own problem is reported by the checks
    if settled is not None:
        setup = setup_from_args(training_args, block_size, ds_config, model_args, config, settled.shape.vocab)
        plan = Plan(settled.shape, setup, settled.machine, training_args.output_dir, settled.given)
        plan.how, plan.changes = settled.how, settled.changes
        return plan
    if tokenizer is not None and len(tokenizer) > getattr(config, "vocab_size", len(tokenizer)):
        config = copy.deepcopy(config)  # the model's embeddings will grow to the tokenizer (loading.py)
        config.vocab_size = len(tokenizer)
    try:
        shape = model_shape_without_deepspeed(config, training_args)
    except ValueError as err:  # e.g. --model_type bert
        source = "--config_name" if model_args.config_name else \
            "--model_name_or_path" if model_args.model_name_or_path else "--model_type"
        raise UsageError(f"{source}: {getattr(config, 'model_type', '?')} is not a causal language model "
                         f"({str(err).splitlines()[0][:120]}); use a decoder such as gpt2") from None
    setup = setup_from_args(training_args, block_size, ds_config, model_args, config, shape.vocab)
    machine = probe_machine(training_args.output_dir, setup.ranks, every_gpu=getattr(training_args, "plan", False))
    plan = Plan(shape, setup, machine, training_args.output_dir, getattr(training_args, "given_flags", {}))
    return settle_mode(plan, training_args.mode, resumed)


def settle_mode(plan, asked, resumed=None):
    """The plan in the mode this run trains in, with .how (why that mode, in a few words), .changes (what it does
    differently from what the user asked), .flags (the flags the run takes on for it: what the mode sets where the
    user gave nothing, and its split of the batch) and .problems (one line each: a flag that contradicts it, a mode
    this machine cannot run, a checkpoint written in another mode)."""
    s, given = plan.setup, plan.given
    gpu = s.cuda and not s.use_cpu
    spelled = modes.spelled(given)
    resumed = resumed or {}
    problems = []
    split = None
    if asked != modes.AUTO:
        mode, how = modes.get(asked), "--mode"
        problems += modes.contradiction_problems(mode, given, gpu, "--mode")
    elif resumed.get("mode"):
        mode, how = modes.get(resumed["mode"]), f"the mode {resumed['path']} was written in"
        if resumed.get("split") and resumed["split"][0] * resumed["split"][1] == s.micro_batch * s.accumulation:
            split = resumed["split"]
    elif spelled:
        mode, how = modes.get(spelled), "the flags given spell it"
    elif not gpu:
        mode, how = modes.get("fp32"), "no GPU here: fp32 weights and AdamW, which the CPU runs"
    else:
        allowed = [m.name for m in MODES if not modes.contradictions(m, given, gpu)]
        chosen = plan.choice(allowed)
        if chosen is not None:
            mode, how = chosen[0], f"auto: the fastest mode that fits {plan.machine_words()}"
            split = (chosen[1].micro_batch, chosen[1].accumulation)
        else:
            runnable = [m for m in modes_by_speed() if m.name in allowed and not plan.can_run(m)]
            mode = runnable[0] if runnable else modes.get("fp32")
            how = f"auto: no mode fits {plan.machine_words()}; the fastest that can run here"
        name, split = same_on_every_process((mode.name, split))
        mode = modes.get(name)
    why_not = plan.can_run(mode)
    if why_not and (asked != modes.AUTO or resumed.get("mode")):
        problems.append(f"the {mode.name} mode ({how}) cannot run here: {why_not}"
                        + ("; --overwrite_output_dir starts again in the mode --mode auto picks" if resumed.get("mode")
                           and asked == modes.AUTO else ""))
    if resumed.get("mode") and asked != modes.AUTO and asked != resumed["mode"]:
        problems.append(f"--mode {asked}: {resumed['path']} was written in the {resumed['mode']} mode, whose optimizer "
                        f"state this mode cannot continue; drop --mode to resume in {resumed['mode']}, or add "
                        "--overwrite_output_dir to start again in this mode")
    elif resumed.get("mode") and spelled and spelled != resumed["mode"]:
        problems.append(f"{resumed['path']} was written in the {resumed['mode']} mode and these flags spell the "
                        f"{spelled} mode; drop them to resume in {resumed['mode']} (--mode auto), or add "
                        "--overwrite_output_dir to start again")
    if spelled and asked == modes.AUTO and not resumed.get("mode"):
        settled = dataclasses.replace(s, mode=mode.name)
        flags = {}
    else:
        if split is None:
            split = plan.splits(mode)[0] if mode.whole_batch else (s.micro_batch, s.accumulation)
        settled = mode_setup(mode, s, plan.shape.vocab, *split) if mode.name != "fp32" else \
            dataclasses.replace(s, mode=mode.name)
        flags = modes.flag_values(mode, given, gpu)
        if split != (s.micro_batch, s.accumulation):
            flags.update(per_device_train_batch_size=split[0], gradient_accumulation_steps=split[1])
    settled_plan = Plan(plan.shape, settled, plan.machine, plan.output_dir, given)
    settled_plan.how = how
    settled_plan.flags = dict(flags, mode=mode.name)
    settled_plan.problems = problems
    settled_plan.changes = ([f"{settled.micro_batch} x {settled.accumulation} accumulation per GPU instead of "
                             f"{s.micro_batch} x {s.accumulation} (the same {s.micro_batch * s.accumulation} "
                             "sequences a step)"] if (settled.micro_batch, settled.accumulation) !=
                            (s.micro_batch, s.accumulation) else []) + list(mode.changes)
    return settled_plan

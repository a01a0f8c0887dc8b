"""Fine-tune and evaluate a causal LM on a chat JSONL dataset; no database and no HTTP server.

    config.py      FinetuneConfig, validated on construction (no torch: the API can import it)
    data.py        chat JSONL reading/validation, chat template, assistant-only labels (no torch)
    errors.py      TrainingError, TrainingDataError(line, reason), InvalidConfig
    packing.py     packed rows, the data order of a whole job, micro-batch tensors
    loss.py        a batch's summed loss: the LM head on target tokens only, in chunks
    memory.py      a job's peak-memory estimate, the device's available memory, the check
    model.py       offline loading (HF directory or .gguf), LoRA, FLOPs and device peaks for MFU
    runtime.py     device and autocast dtype, attention and loss kernels, checkpointing, compile
    step.py        the learning-rate schedule, AdamW, one optimizer step, the validation loss
    train.py       train(config, train_path, valid_path, on_event=, should_stop=, resume_from=)
    result.py      Event and TrainResult, what a job reports (no torch: the launcher reads them)
    distributed.py torchrun's ranks, the gloo/NCCL process group, DDP or FSDP around the loss
    launch.py      run(config, ...): train() in this process, or on several devices via torchrun
    checkpoint.py  checkpoints/step-N, final/ and adapter/
    evaluate.py    greedy generation on held-out tasks, ROUGE-L F1

Import the submodules; this package imports nothing, so `training.errors` stays cheap.
"""

"""cleanssl's plumbing, one topic per module; read a method file first, then common.py, which re-exports what a method
uses. The modules import each other downward only, never common:

    errors       UserError: what the user can fix, one line and an exit code
    distributed  processes (torchrun), devices and precision, gathers with gradients
    optim        LARS, parameter groups, learning-rate and EMA schedules
    imagefiles   reading and decoding image files, DataLoader workers that hand over padded batches
    augment      the batched augmentation on the training device
    data         the datasets: loading, the synthetic set, seeded batches shared out by rank
    backbones    ResNets with the CIFAR stem, a tiny ResNet, the ViT with a masked / subset forward
    evaluation   kNN, linear probes, the online probe, fine-tuning, the representation metrics of a run
    checkpoints  atomic checkpoints, resume, stop signals, writes that fail on a full disk
    runlog       the run directory, tensorboard scalars, the progress line
"""

"""The PyTorch half of the kit: the same ideas as ``minidl``, for work that needs a GPU.

    reference_torch.models        ResNet-18/34 (torchvision layout), thin ResNet-18, WRN-28-2
    reference_torch.train         Trainer, fit, evaluate, warmup_cosine, ModelEMA, callbacks
    reference_torch.augment       batched, seeded image augmentation on the device
    reference_torch.checkpoint    atomic checkpoint files, read with weights_only=True
    reference_torch.distributed   DistributedDataParallel under torchrun
    reference_torch.data          numpy arrays -> torch DataLoader
    reference_torch.interop       to_minidl / from_minidl: copy weights between twin models
    reference_torch.twins         torch twins of minidl.models (MLP, SmallCNN)
    reference_torch.gpt           minGPT-shaped GPT, key/value-cache generation, GPT-2 checkpoints
    reference_torch.text          TextDataset (characters), a grammar corpus whose lines can be checked
    reference_torch.bpe           byte-level BPE: GPT-2's tokenizer, the core CLIP's reuses
    reference_torch.explain       attributions, deletion/insertion, feature visualisation,
                                  adversarial examples
    reference_torch.memorization  label/pixel corruption, epoch checkpoints, one-layer re-initialisation
    reference_torch.ssl           NT-Xent (DDP all-gather), SimCLR and FixMatch augmentations and steps
    reference_torch.clip          OpenAI-layout CLIP (build_model from a state dict), its tokenizer
                                  (clip_tokenizer), a mini-CLIP trained offline (mini_clip), the
                                  course's visual and deep prompts (prompting)
    reference_torch.vae, .aae     the UvA DL1 VAE (bits per dimension) and adversarial autoencoder
    reference_torch.gnn           GCN (message passing and matrix form), max aggregation, GAT
    reference_torch.transfer      a pretrained body with a new head, each strategy's parameter groups,
                                  class-split source/target tasks, accuracy under gaussian test noise

Submodules are imported explicitly (``from reference_torch.train import fit``) so that
importing one part does not pull in the others.
"""

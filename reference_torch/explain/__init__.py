"""Interpretability: attributions, their evaluation, feature visualisation, adversarial examples.

    attribution   Occlusion, Saliency, InputXGradient, GradCAM, IntegratedGradients,
                  SmoothGrad, LayerSaliency; METHODS maps names to the first six.
                  Method(model, ...).attribute(x, target=None) -> Attribution
                  (.relevance (B, H, W), .logits, .target, .raw, .delta)
    metrics       deletion_curve, insertion_curve (RISE), deletion_insertion (both, each
                  beside a random order), auc, auc_difference, mask_share, pointing_game
    activations   activation_maps(model, x, layers), capture (forward hooks)
    featvis       visualize(model, channel(layer, c) | neuron(...) | class_logit(k) |
                  direction(layer, vectors), ...) with PixelImage / FourierImage and
                  RandomTransforms; dataset_examples, class_examples; the building blocks
                  of one image: gradient_x_activation, strongest_channels (semantic
                  dictionary), nmf and neuron_groups
    adversarial   Normalize, fgsm, pgd, accuracy_under_attack, random_sign_noise (the
                  baseline of the attacks), quantize and saved_as_8bit (what a PNG keeps)

Conventions shared by all of them: images are float batches (B, C, H, W); the model
returns logits; it runs in eval mode with frozen parameters while it is being explained
and is restored afterwards; all work on many variants of an image (path steps, patches,
noisy copies, deletion steps) runs in pieces of at most ``batch_size`` model inputs.
"""
from .activations import activation_maps, capture
from .adversarial import (GREY_LEVEL, Normalize, accuracy_under_attack, fgsm, pgd, quantize, random_sign_noise,
                          saved_as_8bit)
from .attribution import (METHODS, Attribution, AttributionMethod, GradCAM, InputXGradient,
                          IntegratedGradients, LayerSaliency, Occlusion, Saliency, SmoothGrad)
from .featvis import (FourierImage, NeuronGroups, PixelImage, RandomTransforms, channel, class_examples, class_logit,
                      color_correlation, dataset_examples, direction, gradient_x_activation,
                      neuron, neuron_groups, nmf, strongest_channels, transform_robustness, visualize)
from .metrics import (Curve, auc, auc_difference, deletion_curve, deletion_insertion, insertion_curve,
                      mask_share, pointing_game)

__all__ = [
    "Attribution", "AttributionMethod", "Occlusion", "Saliency", "InputXGradient", "GradCAM",
    "IntegratedGradients", "SmoothGrad", "LayerSaliency", "METHODS",
    "Curve", "auc", "auc_difference", "deletion_curve", "insertion_curve", "deletion_insertion", "mask_share",
    "pointing_game",
    "activation_maps", "capture",
    "visualize", "channel", "neuron", "class_logit", "direction", "PixelImage", "FourierImage", "RandomTransforms",
    "color_correlation", "dataset_examples", "class_examples", "transform_robustness",
    "gradient_x_activation", "strongest_channels", "nmf", "neuron_groups", "NeuronGroups",
    "Normalize", "fgsm", "pgd", "accuracy_under_attack", "random_sign_noise", "GREY_LEVEL", "quantize",
    "saved_as_8bit",
]

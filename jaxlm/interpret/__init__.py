"""Explainability toolkit over the jaxlm substrate (white-box tier).

Modules:
    attribution: saliency, gradient x input, integrated gradients, SmoothGrad, occlusion,
        per-generated-token attribution.
    surrogate: KernelSHAP and LIME over tokens (coalitions batched through the model).
    attention: attention maps, attention rollout and attention flow.
    lens: the logit lens.
    tracing: activation capture, activation patching, causal tracing.
    probes: logistic-regression probes (Newton, vmapped over layers), neuron statistics.
    faithfulness: comprehensiveness, sufficiency, AOPC, decision flip, plausibility,
        answer mass.
    sanity: cascading model-parameter randomization (rank correlation with the trained model).
"""

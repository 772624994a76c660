"""Explainability toolkit over the jaxlm substrate (white-box tier).

Modules:
    attribution: saliency, gradient x input, integrated gradients, SmoothGrad, occlusion.
    attention: attention maps, attention rollout and attention flow.
    lens: the logit lens.
    tracing: activation capture, activation patching, causal tracing.
    probes: logistic-regression probes (Newton, vmapped over layers), neuron statistics.
    faithfulness: comprehensiveness, sufficiency, AOPC, decision flip, plausibility.
"""

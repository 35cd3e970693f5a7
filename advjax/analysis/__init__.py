"""Analyses of trained models: interactions, information, spurious reliance, trade-offs.

The gradient and saliency primitives (gradient, SmoothGrad, integrated gradients) sit
below the objectives that use them, in `advjax.saliency`.
"""

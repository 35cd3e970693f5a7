"""Analyses of trained models: interactions, information, saliency, spurious reliance."""

"""abd: backdoor-safe data-free knowledge distillation (Hong et al., ICML 2023, arXiv 2306.02368)."""

__version__ = "0.1.0"

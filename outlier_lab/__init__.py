"""outlier_lab: declarative experiments that find LLM.int8() outlier features in dense and MoE transformers."""

__version__ = "0.1.0"

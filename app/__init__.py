"""mT5 Studio's Gradio app: task functions (plain Python), the model cache, and thin Gradio tabs over them."""

__version__ = "0.2.0"

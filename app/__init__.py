"""mT5 Studio's Gradio app."""

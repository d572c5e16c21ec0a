"""Entry point: builds the app and launches it. (A minimal page until the app issue lands.)"""
from __future__ import annotations

import argparse


def build():
    import gradio as gr

    with gr.Blocks(title="mT5 Studio") as demo:
        gr.Markdown("# mT5 Studio\nThe model layer is ready; the task tabs are being built.")
    return demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="mT5 Studio")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    build().launch(server_name=args.host, server_port=args.port)
    return 0

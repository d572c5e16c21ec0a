"""The annotation UI: the panel under every task tab's result (`panel`), the Annotations tab and the Batch tab."""

"""The page that tries a model (Gradio), and the app an exported space folder runs."""

"""The Streamlit page's building blocks: model anatomy, figures, caches and downloads.

``app.py`` composes the page from these; everything that can be computed without Streamlit
lives in plain functions here so it can be tested on its own.
"""

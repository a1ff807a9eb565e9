"""Shared Streamlit code of the app (pages import from here; the paraknow library never does)."""

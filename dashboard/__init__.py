"""The operator's dashboard: a Streamlit app that only reads the store (see README.md)."""

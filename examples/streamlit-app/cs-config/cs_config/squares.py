"""The Streamlit sample app's one function (app.py is the script `streamlit run` serves)."""


def square(n: int) -> str:
    return f"{n} squared is {n * n}"

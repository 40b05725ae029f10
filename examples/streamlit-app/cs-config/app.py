"""A tiny Streamlit app: a button whose click (a message over the app's WebSocket) reruns the
script on the server, which adds one to n and writes its square."""

import streamlit as st
from cs_config.squares import square

st.title("Squares")
if "n" not in st.session_state:
    st.session_state.n = 7
if st.button("Add one"):
    st.session_state.n += 1
st.write(square(st.session_state.n))

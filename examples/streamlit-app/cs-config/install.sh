# A Streamlit app as Compute Studio served it: `streamlit run app.py --server.baseUrlPath …`
# (model config: tech streamlit, app_location app.py, a path in cs-config/).
pip install "streamlit==1.67.0"

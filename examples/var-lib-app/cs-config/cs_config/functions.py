"""A model like Tax-Brain's report: it needs a Debian package that keeps its data under
/var/lib (sgml-base: /etc/sgml/catalog links to /var/lib/sgml-base/supercatalog, as texlive's
ls-R links to /var/lib/texmf), and its tests write a report folder into their working
directory (Tax-Brain writes ./Policy-Report-…/)."""

from pathlib import Path

CATALOG = Path("/etc/sgml/catalog")


def get_version():
    return "1.0.0"


def get_inputs(meta_param_dict):
    return {"meta_parameters": {}, "model_parameters": {"catalog": {}}}


def validate_inputs(meta_param_dict, adjustment, errors_warnings):
    return {"errors_warnings": errors_warnings}


def write_report(folder: Path) -> Path:
    """The catalog's text in `folder`/Report/catalog.txt (raises if the package's data under
    /var/lib cannot be read)."""
    report = folder / "Report"
    report.mkdir(exist_ok=True)
    target = report / "catalog.txt"
    target.write_text(CATALOG.read_text())
    return target


def run_model(meta_param_dict, adjustment):
    return {
        "renderable": [{"media_type": "Text", "title": "catalog", "data": CATALOG.read_text()}],
        "downloadable": [],
    }

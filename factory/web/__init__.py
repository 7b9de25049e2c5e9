"""The annotator workbench and REST API (`factory serve`): FastAPI pages and JSON endpoints over the ledger."""
from factory.web.app import create_app

__all__ = ["create_app"]

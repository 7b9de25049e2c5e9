"""The web app's routes, one `APIRouter` per resource; `factory.web.app.create_app` includes them in this order."""
from factory.web.routers import batches, disputes, items, pages, people, releases, tasks

ROUTERS = (people.router, tasks.router, items.router, disputes.router, batches.router, releases.router,
           pages.router)

__all__ = ["ROUTERS"]

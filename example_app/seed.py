"""Demo data, added once: running it again changes nothing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import APPROVED, Caption, Image, User
from .settings import DEMO_PASSWORD, DEMO_USERNAME

IMAGES = [
    ("Harbour at dawn", "#e9a23b", ["Boats waiting for the tide", "Morning light on the water"]),
    ("Forest path", "#3b7d4f", ["A path nobody took", "Green, greener, greenest"]),
    ("City at night", "#2b3a67", ["Lights that never sleep"]),
]


def seed_demo(session: Session) -> bool:
    """Add the demo users, images and captions unless the demo user exists; True if added."""
    if session.scalar(select(User.id).where(User.username == DEMO_USERNAME)) is not None:
        return False
    demo = User(username=DEMO_USERNAME, is_admin=True)
    demo.set_password(DEMO_PASSWORD)
    ada = User(username="ada")
    ada.set_password("ada-password")
    session.add_all([demo, ada])
    session.flush()
    for title, color, texts in IMAGES:
        image = Image(title=title, color=color)
        image.captions = [Caption(text=text, author_id=ada.id) for text in texts]
        session.add(image)
    session.flush()
    # One caption already reviewed, so the pages show both states.
    first = session.scalars(select(Caption).order_by(Caption.id)).first()
    if first is not None:
        first.status = APPROVED
        first.reviewed_by_id = demo.id
    return True

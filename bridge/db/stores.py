"""One object holding one store per table (bridgev2's ``Database`` aggregate).

Built once per process and handed to the core, the gatekeeper side and the Matrix side
alike, so that each table has one cache: a logout one part sees, every part sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from .database import Database
from .kv import KeyValueStore
from .later import LaterWrites
from .logins import LoginStore
from .matrix_events import MatrixEventStore
from .media import PartnerMediaRows
from .portals import MessageStore, PortalStore, PuppetStore
from .queues import Inbox, Outbox
from .sealed import Sealer
from .secrets import SecretStore
from .undecrypted import UndecryptedStore


@dataclass(frozen=True)
class Stores:
    db: Database
    sealer: Sealer
    logins: LoginStore
    portals: PortalStore
    puppets: PuppetStore
    messages: MessageStore
    inbox: Inbox
    outbox: Outbox
    matrix_events: MatrixEventStore
    undecrypted: UndecryptedStore
    kv: KeyValueStore
    partner_media: PartnerMediaRows
    secrets: SecretStore
    later: LaterWrites

    @classmethod
    def create(cls, db: Database, sealer: Sealer) -> Stores:
        later = LaterWrites(db)
        return cls(
            db=db,
            sealer=sealer,
            logins=LoginStore(db, sealer),
            portals=PortalStore(db),
            puppets=PuppetStore(db),
            messages=MessageStore(db, later),
            inbox=Inbox(db, sealer, later),
            outbox=Outbox(db, sealer, later),
            matrix_events=MatrixEventStore(db, sealer),
            undecrypted=UndecryptedStore(db),
            kv=KeyValueStore(db),
            partner_media=PartnerMediaRows(db),
            secrets=SecretStore(db, sealer),
            later=later,
        )

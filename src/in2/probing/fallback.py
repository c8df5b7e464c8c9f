"""The probes' fallback documents: the Wikipedia summaries of the wiki_offline package.

A corpus without titles or descriptions (C4, a folder of plain texts) gives the database probe
no entity, and one without sentence punctuation gives the document probe no sentence; those
tasks then draw from these documents (in2.probing.build.load_pool), which
requirements-offline-data.txt installs on every machine, read as the corpus stage reads them.

A module of its own so that only the probe_data stage reads, and depends on, the corpus reader:
the probe runners and the report, which share in2.probing.tasks, never re-run for it.
"""

from __future__ import annotations

import pandas as pd

from in2.data.corpus import COLUMNS, CorpusStats, read_wiki_offline
from in2.params import CorpusParams
from in2.probing.tasks import FallbackDocuments


def wiki_offline_documents() -> pd.DataFrame:
    """The package's 10,033 articles (title, text, description, source = `wiki_offline`)."""
    return pd.DataFrame(list(read_wiki_offline(CorpusParams(), CorpusStats())), columns=COLUMNS)


WIKI_OFFLINE = FallbackDocuments("wiki_offline package", wiki_offline_documents)

"""On-device photo search: an index of image embeddings in one SQLite file, kept in step with a folder, searched
by text or example image; and retrieval recall of a bundle on a captioned set.

    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.search import index_folder, open_index

    bundle = load_bundle("mc2s0.edgeclip")
    index_folder(bundle, "~/Pictures", "photos.sqlite")
    with open_index("photos.sqlite", bundle) as index:
        for hit in index.search_text("a dog on the beach at sunset", k=10).hits:
            print(hit.score, hit.path)
"""

from edgeclip.runtimes.search.ann import list_ann
from edgeclip.runtimes.search.evaluate import evaluate_retrieval, read_caption_set
from edgeclip.runtimes.search.indexer import IndexReport, index_folder
from edgeclip.runtimes.search.query import Hit, PhotoIndex, SearchResult, open_index
from edgeclip.runtimes.search.store import SCHEMA_VERSION, STORAGES, SearchIndexError

__all__ = [
    "SCHEMA_VERSION",
    "STORAGES",
    "Hit",
    "IndexReport",
    "PhotoIndex",
    "SearchIndexError",
    "SearchResult",
    "evaluate_retrieval",
    "index_folder",
    "list_ann",
    "open_index",
    "read_caption_set",
]

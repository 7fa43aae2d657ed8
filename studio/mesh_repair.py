"""Mesh cleanup after marching cubes: coincident vertices welded, small pieces dropped, decimation, and the
mend that keeps a closed surface closed afterwards.

Quadric decimation (fast-simplification) occasionally folds two sheets onto one edge (an edge of four
faces) or leaves a face twice; a mesh that was watertight is then no longer. `mend` cuts such places out
(every face around the edge's vertices) and closes each hole it made with a fan around the hole's
centroid, until every edge has exactly two faces or nothing more can be done (`max_rounds`).

Meshes are (verts [V, 3] float64, faces [F, 3] int64) pairs, faces counter-clockwise seen from outside.
"""

from __future__ import annotations

import numpy as np


def edge_keys(faces: np.ndarray) -> np.ndarray:
    """[F, 3] int64 key of each face's edges (0-1, 1-2, 2-0), the same for both directions."""
    a, b = faces, np.roll(faces, -1, axis=1)
    n = np.int64(faces.max()) + 1 if faces.size else np.int64(1)
    return np.minimum(a, b) * n + np.maximum(a, b)


def edge_counts(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(undirected edge keys [E] (see `edge_keys`), how many faces hold each [E])."""
    return np.unique(edge_keys(faces), return_counts=True)


def is_closed(faces: np.ndarray) -> bool:
    """Every edge held by exactly two faces (what trimesh calls watertight)."""
    return len(faces) > 0 and bool((edge_counts(faces)[1] == 2).all())


def drop_small_components(verts: np.ndarray, faces: np.ndarray, min_share: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove connected pieces with less than `min_share` of the faces (never the largest). Returns
    (verts, faces, pieces removed)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = faces.reshape(-1), np.roll(faces, -1, axis=1).reshape(-1)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(len(verts), len(verts)))
    _, vertex_label = connected_components(graph, directed=False)
    labels = vertex_label[faces[:, 0]]  # [F] the piece of each face
    sizes = np.bincount(labels)
    keep = sizes >= min_share * len(faces)
    keep[np.argmax(sizes)] = True
    kept = keep[np.unique(labels)]
    if kept.all():
        return verts, faces, 0
    return (*_compact(verts, faces[keep[labels]]), int((~kept).sum()))


def decimate(verts: np.ndarray, faces: np.ndarray, max_faces: int, tol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to at most `max_faces` faces (a no-op below it), then `weld` (tol) and `mend`."""
    if not max_faces or len(faces) <= max_faces:
        return verts, faces
    import fast_simplification

    was_closed = is_closed(faces)
    v, f = fast_simplification.simplify(verts.astype(np.float32), faces.astype(np.int32), target_count=max_faces)
    v, f = weld(np.asarray(v, np.float64), np.asarray(f, np.int64), tol)
    return mend(v, f) if was_closed and not is_closed(f) else (v, f)


def weld(verts: np.ndarray, faces: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices closer than `tol` (world units) into one, drop the faces that collapse, renumber.

    Marching cubes puts two vertices on one spot where the field equals the level at a grid corner, and
    decimation leaves near-duplicates; a reader that merges vertices by position (trimesh does, at 1e-8)
    would otherwise turn them into pinches and the file would not load watertight."""
    if tol > 0 and len(verts) > 1:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        from scipy.spatial import cKDTree

        pairs = cKDTree(verts).query_pairs(tol, output_type="ndarray")  # [M, 2]
        if len(pairs):
            graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])),
                               shape=(len(verts), len(verts)))
            _, cluster = connected_components(graph, directed=False)  # [V] one label per group of close vertices
            first = np.full(cluster.max() + 1, len(verts), np.int64)
            np.minimum.at(first, cluster, np.arange(len(verts)))
            faces = first[cluster][faces]  # every vertex of a group becomes the group's first
    return _compact(verts, _drop_doubled(faces) if tol > 0 else faces)


def _compact(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses and faces with a repeated vertex; renumber."""
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    used = np.unique(faces)
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


def _drop_doubled(faces: np.ndarray) -> np.ndarray:
    """Remove every copy of a face that appears more than once (as the same three vertices)."""
    key = np.sort(faces, axis=1)
    order = np.lexsort(key.T[::-1])
    k = key[order]
    same = np.zeros(len(k) + 1, bool)
    same[1:-1] = (k[1:] == k[:-1]).all(axis=1)  # same[i]: row i - 1 equals row i (sorted order)
    doubled = np.zeros(len(faces), bool)
    doubled[order] = same[:-1] | same[1:]
    return faces[~doubled]


def mend(verts: np.ndarray, faces: np.ndarray, max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Make every edge hold exactly two faces, where the mesh was closed before decimation (see module)."""
    for _ in range(max_rounds):
        faces = _drop_doubled(faces)
        keys, counts = edge_counts(faces)
        if (counts == 2).all():
            break
        bad = keys[counts != 2]
        n = np.int64(faces.max()) + 1
        at_bad = np.unique(np.concatenate([bad // n, bad % n]))
        faces = faces[~np.isin(faces, at_bad).any(axis=1)]  # every face at a vertex of a bad edge
        verts, faces = _fill_holes(verts, faces)
    return _compact(verts, faces)


def _fill_holes(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Close each simple boundary loop with a fan around its centroid (one new vertex per loop). A loop
    that is not simple (a vertex with two boundary edges leaving it) is left for the next round."""
    keys = edge_keys(faces).reshape(-1)  # [3F]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    on_border = counts[inverse.ravel()] == 1
    directed = np.stack([faces.reshape(-1), np.roll(faces, -1, axis=1).reshape(-1)], axis=1)[on_border]
    # the hole runs the other way round than the faces beside it: b -> a
    starts, ends = directed[:, 1], directed[:, 0]
    leaving, how_many = np.unique(starts, return_counts=True)
    ambiguous = set(leaving[how_many > 1].tolist())  # two holes meet at the vertex: which way is unclear
    nxt = dict(zip(starts.tolist(), ends.tolist()))
    new_verts, new_faces = [verts], [faces]
    seen: set[int] = set()
    count = len(verts)
    for start in nxt:
        if start in seen or start in ambiguous:
            continue
        loop, v = [], start
        while v not in seen and v in nxt and v not in ambiguous:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        if v != start or len(loop) < 3:
            continue
        ring = np.array(loop, np.int64)
        new_faces.append(np.stack([ring, np.roll(ring, -1), np.full(len(ring), count, np.int64)], axis=1))
        new_verts.append(verts[ring].mean(axis=0, keepdims=True))
        count += 1
    return np.concatenate(new_verts), np.concatenate(new_faces)

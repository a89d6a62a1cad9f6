"""Converts between ComfyUI's API-format graphs and UI-format workflows, using /object_info.

Widget values in the UI format follow the node's input order (required, then optional),
leaving out inputs that are links.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(spec: dict) -> list[tuple[str, str, dict]]:
    out = []
    for group in ("required", "optional"):
        for name, value in spec["input"].get(group, {}).items():
            kind = value[0] if isinstance(value[0], str) else "COMBO"
            out.append((name, kind, value[1] if len(value) > 1 else {}))
    return out


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def api_to_ui(graph: dict, info: dict) -> dict:
    """An API graph {id: {class_type, inputs}} -> a UI workflow with links and laid-out nodes."""
    nodes, links = {}, []
    for col, (node_id, node) in enumerate(graph.items()):
        spec = info[node["class_type"]]
        nodes[node_id] = {
            "id": int(node_id), "type": node["class_type"], "pos": [60 + 340 * col, 120 + 40 * (col % 2)],
            "size": [315, 130], "flags": {}, "order": col, "mode": 0, "inputs": [],
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                        for i, (name, kind) in enumerate(zip(spec["output_name"], spec["output"]))],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": [],
            "title": spec.get("display_name", node["class_type"]),
        }
    for node_id, node in graph.items():
        ui = nodes[node_id]
        for name, kind, _ in _inputs(info[node["class_type"]]):
            value = node["inputs"].get(name)
            if kind in WIDGET_TYPES and not _is_link(value):
                ui["widgets_values"].append(value)
            elif kind not in WIDGET_TYPES:
                link = None
                if _is_link(value):
                    link = len(links) + 1
                    src, slot = value
                    links.append([link, int(src), slot, int(node_id), len(ui["inputs"]), kind])
                    nodes[src]["outputs"][slot]["links"].append(link)
                ui["inputs"].append({"name": name, "type": kind, "link": link})
    return {"last_node_id": max(int(k) for k in graph), "last_link_id": len(links), "nodes": list(nodes.values()),
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(workflow: dict, info: dict) -> dict:
    """The inverse of api_to_ui: what the page sends to /prompt for this workflow."""
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        spec = info[node["type"]]
        widgets = iter(node["widgets_values"])
        by_name = {i["name"]: i for i in node["inputs"]}
        inputs = {}
        for name, kind, _ in _inputs(spec):
            if kind in WIDGET_TYPES:
                inputs[name] = next(widgets)
            elif by_name.get(name, {}).get("link") is not None:
                link = links[by_name[name]["link"]]
                inputs[name] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph

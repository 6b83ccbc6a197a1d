//! Pictures of a compiled graph: `kiln inspect --dot` (Graphviz text: the graph before or after
//! the passes, fused nodes filled and labelled with their steps, channel-blocked values and
//! relayouts coloured) and `kiln inspect --html` (one self-contained page: totals, the op
//! table, the memory plan as an SVG timeline of buffers by lifetime and offset, and the
//! per-node profile when one is given).

use crate::inspect;
use kiln_ir::memplan::{self, What};
use kiln_ir::{Graph, Op, ValueDef};
use std::collections::HashMap;
use std::fmt::Write;

fn dot_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn shape_text(t: &kiln_ir::TensorType) -> String {
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let layout = if t.layout.is_plain() {
        String::new()
    } else {
        format!(" {}", t.layout)
    };
    format!("{}[{}]{layout}", t.dtype, dims.join(","))
}

/// Whether `n` carries fused work (an epilogue, chain steps).
fn fused(n: &kiln_ir::Node) -> bool {
    match &n.op {
        Op::Conv(a) => !a.epilogue.is_empty(),
        Op::MatMul(a) => !a.epilogue.is_empty(),
        Op::Gemm(a) => !a.epilogue.is_empty(),
        Op::Chain { .. } => true,
        _ => false,
    }
}

/// Graphviz text of `g`: graph inputs and outputs as ellipses, a box per node (op with its
/// fused steps, output shape), edges labelled with the tensor's shape; fused nodes filled
/// orange, relayouts and channel-blocked values (`nchw8c`) blue, constants folded into their
/// readers' labels (`+2 const`).
pub fn dot(g: &Graph, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", dot_str(title));
    let _ = writeln!(
        s,
        "  rankdir=TB; node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=\"Helvetica\", fontsize=10]; edge [fontname=\"Helvetica\", fontsize=8];"
    );
    for (i, &v) in g.inputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  in{i} [shape=ellipse, fillcolor=\"#d9f2d9\", label={}];",
            dot_str(&format!("{}\n{}", g.value(v).name, shape_text(g.ty(v))))
        );
    }
    for (j, &v) in g.outputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  out{j} [shape=ellipse, fillcolor=\"#f2d9d9\", label={}];",
            dot_str(&format!("{}\n{}", g.value(v).name, shape_text(g.ty(v))))
        );
    }
    let mut producer: HashMap<usize, String> = HashMap::new();
    for (i, &v) in g.inputs.iter().enumerate() {
        producer.insert(v.index(), format!("in{i}"));
    }
    for (k, (nid, n)) in g.iter_nodes().enumerate() {
        let id = format!("n{}", nid.index());
        let consts = n
            .inputs
            .iter()
            .filter(|&&v| matches!(g.value(v).def, ValueDef::Const(_)))
            .count();
        let mut label = format!("#{k} {}\n{}", kiln_ir::cost::op_label(n), n.name);
        if consts > 0 {
            let _ = write!(label, "\n+{consts} const");
        }
        let style = if matches!(n.op, Op::Relayout { .. }) {
            ", fillcolor=\"#cfe2ff\", shape=cds"
        } else if fused(n) {
            ", fillcolor=\"#ffd8a8\", penwidth=2"
        } else {
            ""
        };
        let _ = writeln!(s, "  {id} [label={}{style}];", dot_str(&label));
        for &o in &n.outputs {
            producer.insert(o.index(), id.clone());
        }
    }
    let edge = |s: &mut String, from: &str, to: &str, v: kiln_ir::ValueId| {
        let t = g.ty(v);
        let color = if t.layout.is_plain() {
            ""
        } else {
            ", color=\"#1c5fd1\", fontcolor=\"#1c5fd1\", penwidth=2"
        };
        let _ = writeln!(
            s,
            "  {from} -> {to} [label={}{color}];",
            dot_str(&shape_text(t))
        );
    };
    for (nid, n) in g.iter_nodes() {
        for &v in &n.inputs {
            if let Some(p) = producer.get(&v.index()) {
                edge(&mut s, p, &format!("n{}", nid.index()), v);
            }
        }
    }
    for (j, &v) in g.outputs.iter().enumerate() {
        if let Some(p) = producer.get(&v.index()) {
            edge(&mut s, p, &format!("out{j}"), v);
        }
    }
    s.push_str("}\n");
    s
}

/// A node's time from a profile: mean ms per run and the step's FLOPs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTime {
    pub ms: f64,
    pub flops: u64,
}

/// Per-node mean times from a Chrome trace written by `kiln run --profile-json` or an
/// executable's `--profile-json` (events of category `Node`, durations in microseconds),
/// keyed by node name.
pub fn read_trace(json: &str) -> Result<HashMap<String, NodeTime>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not a JSON trace: {e}"))?;
    let events = v
        .as_array()
        .or_else(|| v.get("traceEvents").and_then(|e| e.as_array()))
        .ok_or("not a Chrome trace (a JSON array of events)")?;
    let mut sum: HashMap<String, (f64, u64, usize)> = HashMap::new();
    for e in events {
        if e.get("cat").and_then(|c| c.as_str()) != Some("Node") {
            continue;
        }
        let name = e.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let dur = e.get("dur").and_then(|d| d.as_f64()).unwrap_or(0.0);
        let flops = e
            .get("args")
            .and_then(|a| a.get("flops"))
            .and_then(|f| f.as_u64())
            .unwrap_or(0);
        let x = sum.entry(name.to_string()).or_insert((0.0, flops, 0));
        x.0 += dur / 1e3;
        x.2 += 1;
    }
    if sum.is_empty() {
        return Err("the trace has no Node events (write one with kiln run --profile-json)".into());
    }
    Ok(sum
        .into_iter()
        .map(|(k, (ms, flops, n))| {
            (
                k,
                NodeTime {
                    ms: ms / n as f64,
                    flops,
                },
            )
        })
        .collect())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The memory plan as an SVG: x = schedule position, y = workspace offset; one rectangle per
/// buffer (tensors blue, kernel scratch orange), its tooltip naming it.
fn plan_svg(g: &Graph) -> Result<String, String> {
    let plan = kiln_target_cpu::plan(g);
    let bufs = memplan::buffers(g, &plan)?;
    let steps = g.iter_nodes().count().max(1);
    let total = plan.workspace_size.max(1);
    let (w, h, left, top, bottom) = (960.0f64, 360.0f64, 70.0f64, 10.0f64, 30.0f64);
    let (pw, ph) = (w - left - 10.0, h - top - bottom);
    let x = |pos: usize| left + pw * pos as f64 / steps as f64;
    let y = |off: usize| top + ph * off as f64 / total as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg id=\"memplan\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"memory plan\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"#f8f9fa\" stroke=\"#adb5bd\"/>"
    );
    let names: Vec<&str> = g.iter_nodes().map(|(_, n)| n.name.as_str()).collect();
    for b in &bufs {
        let (label, color, row) = match b.what {
            What::Value(v) => {
                let producer = match g.value(v).def {
                    ValueDef::Node(p, _) => g.iter_nodes().position(|(id, _)| id == p),
                    _ => None,
                };
                (
                    format!("tensor '{}' {}", g.value(v).name, shape_text(g.ty(v))),
                    "#4c8bf5",
                    producer,
                )
            }
            What::Scratch(n) => (
                format!("scratch of '{}'", g.node(n).name),
                "#f59f00",
                g.iter_nodes().position(|(id, _)| id == n),
            ),
        };
        let (x0, x1) = (x(b.first), x(b.last + 1));
        let (y0, y1) = (y(b.offset), y(b.offset + b.size));
        let _ = writeln!(
            s,
            "<rect class=\"buf\" data-row=\"{}\" x=\"{x0:.2}\" y=\"{y0:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{color}\" fill-opacity=\"0.75\" stroke=\"#1d3557\" stroke-width=\"0.5\"><title>{}: {} at +{}, nodes {}..={} ({} .. {})</title></rect>",
            row.map(|r| r.to_string()).unwrap_or_default(),
            (x1 - x0).max(0.5),
            (y1 - y0).max(0.5),
            esc(&label),
            human(b.size),
            b.offset,
            b.first,
            b.last,
            esc(names.get(b.first).unwrap_or(&"")),
            esc(names.get(b.last).unwrap_or(&"")),
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{}\" font-size=\"11\">node 0</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">node {}</text>",
        h - 12.0,
        left + pw,
        h - 12.0,
        steps - 1
    );
    let _ = writeln!(
        s,
        "<text x=\"4\" y=\"{}\" font-size=\"11\">+0</text><text x=\"4\" y=\"{}\" font-size=\"11\">{}</text>",
        top + 10.0,
        top + ph,
        esc(&human(plan.workspace_size))
    );
    s.push_str("</svg>\n");
    Ok(s)
}

/// The HTML report of an optimized graph, with a profile (from [`read_trace`]) if given.
pub fn html(
    g: &Graph,
    title: &str,
    profile: Option<&HashMap<String, NodeTime>>,
) -> Result<String, String> {
    let rows = inspect::rows(g);
    let sm = inspect::summary(g);
    let weights: usize = g.live_consts().iter().map(|&v| g.ty(v).size_bytes()).sum();
    let svg = plan_svg(g)?;
    let total_ms: f64 = profile
        .map(|p| p.values().map(|t| t.ms).sum())
        .unwrap_or(0.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>kiln report: {t}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #212529; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border-bottom: 1px solid #dee2e6; padding: 2px 8px; text-align: left; white-space: nowrap; }}
th {{ cursor: pointer; background: #f1f3f5; position: sticky; top: 0; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.hot td {{ background: #fff3bf; }}
.fused {{ color: #d9480f; font-weight: 600; }}
.blocked {{ color: #1c5fd1; }}
.bar {{ display: inline-block; height: 9px; background: #f76707; vertical-align: middle; }}
.totals span {{ margin-right: 1.5em; }}
</style></head>
<body data-ready="0">
<h1>kiln report: {t}</h1>
<p class="totals"><span>{nodes} ops</span><span>{gflop:.3} GFLOP</span><span>weights {wts}</span><span>workspace {ws} (naive {naive}, {pct:.1} %)</span>{prof}</p>
<h2>Memory plan</h2>
<p>Each rectangle is a workspace buffer: from the node that writes it to the last that reads it (x), at its offset (y). Blue: tensors, orange: kernel scratch. Hover for details.</p>
{svg}"#,
        t = esc(title),
        nodes = sm.nodes,
        gflop = sm.flops as f64 / 1e9,
        wts = human(weights),
        ws = human(sm.workspace),
        naive = human(sm.naive),
        pct = if sm.naive > 0 {
            100.0 * sm.workspace as f64 / sm.naive as f64
        } else {
            0.0
        },
        prof = if profile.is_some() {
            format!("<span>profile: {total_ms:.3} ms per run</span>")
        } else {
            String::new()
        },
        svg = svg
    );
    if let Some(p) = profile {
        let mut top: Vec<(&String, &NodeTime)> = p.iter().collect();
        top.sort_by(|a, b| b.1.ms.total_cmp(&a.1.ms).then(a.0.cmp(b.0)));
        let _ = writeln!(
            s,
            "<h2>Profile: slowest nodes</h2>\n<table id=\"profile\"><tr><th>node</th><th>ms</th><th>%</th><th>GFLOP/s</th><th></th></tr>"
        );
        for (name, t) in top.iter().take(15) {
            let pct = if total_ms > 0.0 {
                100.0 * t.ms / total_ms
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td class=\"num\">{:.4}</td><td class=\"num\">{pct:.1}</td><td class=\"num\">{:.2}</td><td><span class=\"bar\" style=\"width:{:.0}px\"></span></td></tr>",
                esc(name),
                t.ms,
                if t.ms > 0.0 {
                    t.flops as f64 / (t.ms * 1e6)
                } else {
                    0.0
                },
                3.0 * pct
            );
        }
        s.push_str("</table>\n");
    }
    let _ = writeln!(
        s,
        "<h2>Ops</h2>\n<table id=\"ops\"><thead><tr><th>#</th><th>op</th><th>output</th><th>FLOPs</th><th>fused</th><th>buffer</th><th>node</th>{}</tr></thead><tbody>",
        if profile.is_some() {
            "<th>ms</th><th>%</th><th>GFLOP/s</th>"
        } else {
            ""
        }
    );
    for r in &rows {
        let blocked = r.output.contains('@');
        let _ = write!(
            s,
            "<tr id=\"op{}\"><td class=\"num\">{}</td><td>{}</td><td{}>{}</td><td class=\"num\">{}</td><td class=\"fused\">{}</td><td>{}</td><td>{}</td>",
            r.index,
            r.index,
            esc(r.op),
            if blocked { " class=\"blocked\"" } else { "" },
            esc(&r.output),
            r.flops,
            esc(&r.fused),
            esc(&r.buffer),
            esc(&r.node)
        );
        if let Some(p) = profile {
            match p.get(&r.node) {
                Some(t) => {
                    let _ = write!(
                        s,
                        "<td class=\"num\">{:.4}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.2}</td>",
                        t.ms,
                        if total_ms > 0.0 {
                            100.0 * t.ms / total_ms
                        } else {
                            0.0
                        },
                        if t.ms > 0.0 {
                            t.flops as f64 / (t.ms * 1e6)
                        } else {
                            0.0
                        }
                    );
                }
                None => s.push_str("<td></td><td></td><td></td>"),
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table>\n");
    s.push_str(
        r##"<script>
"use strict";
(function () {
  // sort the op table by a column (click its header); numbers numerically
  var table = document.getElementById("ops");
  var heads = table.querySelectorAll("th");
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.order !== "asc";
      th.dataset.order = asc ? "asc" : "desc";
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  // hovering a buffer highlights the op that writes it
  document.querySelectorAll("#memplan .buf").forEach(function (rect) {
    var row = document.getElementById("op" + rect.dataset.row);
    if (!row) return;
    rect.addEventListener("mouseenter", function () { row.classList.add("hot"); });
    rect.addEventListener("mouseleave", function () { row.classList.remove("hot"); });
  });
  document.body.dataset.ready = "1";
})();
</script>
</body></html>
"##,
    );
    Ok(s)
}

//! `kiln inspect --dot` and `kiln inspect --html`: the Graphviz text before and after the
//! passes, and the HTML report (op table, memory plan SVG, profile) rendered in a real headless
//! Chromium: the page's script runs to its end, the console stays empty, the screenshot has
//! content. Chromium comes from `scripts/setup-tools.sh` (Debian's `chromium`); without it the
//! browser cases skip with a message, unless `KILN_REQUIRE_TOOLS=1`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const TINY: &str = "examples/models/tiny_cnn.onnx";

/// (from, to, attributes) of a DOT edge.
type Edge = (String, String, String);

/// Nodes declared and edges of a DOT text; every edge joins declared nodes.
fn parse_dot(dot: &str) -> (HashMap<String, String>, Vec<Edge>) {
    assert!(
        dot.starts_with("digraph ") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    let mut nodes = HashMap::new();
    let mut edges = Vec::new();
    for line in dot.lines().map(str::trim) {
        if let Some((from, rest)) = line.split_once(" -> ") {
            let (to, attrs) = rest.split_once(' ').unwrap();
            edges.push((from.to_string(), to.to_string(), attrs.to_string()));
        } else if let Some((id, attrs)) = line.split_once(" [")
            && !id.contains(' ')
            && id != "node"
        {
            nodes.insert(id.to_string(), attrs.to_string());
        }
    }
    for (f, t, _) in &edges {
        assert!(
            nodes.contains_key(f) && nodes.contains_key(t),
            "edge {f} -> {t}"
        );
    }
    (nodes, edges)
}

#[test]
fn dot_before_and_after_the_passes() {
    let m = root().join(TINY);
    let before = ok(kiln()
        .arg("inspect")
        .arg(&m)
        .args(["--dot", "--dot-stage", "before"]));
    let after = ok(kiln().arg("inspect").arg(&m).arg("--dot"));
    let (nb, eb) = parse_dot(&before);
    let (na, ea) = parse_dot(&after);
    // as loaded: 8 ONNX nodes (+ input, output), separate relus, nothing fused
    assert_eq!(nb.len(), 8 + 2, "{before}");
    assert!(
        before.contains("relu1") && !before.contains("ffd8a8"),
        "{before}"
    );
    // optimized: the ReLUs fused into the convolutions (filled, labelled conv+relu), fewer nodes
    assert!(na.len() < nb.len(), "{after}");
    let fused: Vec<&String> = na.values().filter(|a| a.contains("conv+relu")).collect();
    assert_eq!(fused.len(), 2, "{after}");
    assert!(fused.iter().all(|a| a.contains("#ffd8a8")), "{after}");
    assert!(eb.len() > ea.len());
    // input and output ellipses, edges labelled with shapes
    assert!(na["in0"].contains("image\\nf32[1,1,8,8]"));
    assert!(na["out0"].contains("probs"));
    assert!(
        ea.iter()
            .any(|(_, t, a)| t == "out0" && a.contains("f32[1,10]"))
    );
}

/// Channel-blocked values and relayouts are marked (MobileNetV2 on the host's layout model
/// is blocked throughout; LeNet-5's pool output is relaid out before the Gemm).
#[test]
fn dot_marks_layouts() {
    let m = root().join("golden/models/lenet5.onnx");
    if !m.exists() {
        assert!(
            std::env::var("KILN_REQUIRE_GOLDEN").map_or(true, |v| v != "1"),
            "{} missing",
            m.display()
        );
        eprintln!("SKIPPED: {} missing", m.display());
        return;
    }
    let dot = ok(kiln().arg("inspect").arg(&m).arg("--dot"));
    let (nodes, edges) = parse_dot(&dot);
    let relayouts: HashSet<&String> = nodes
        .iter()
        .filter(|(_, a)| a.contains("relayout"))
        .map(|(k, _)| k)
        .collect();
    if relayouts.is_empty() {
        // a host whose kernels take no blocked layout (Cranelift-only builds)
        eprintln!("no blocked layouts on this host:\n{dot}");
        return;
    }
    assert!(nodes.values().any(|a| a.contains("shape=cds")));
    // the relayout reads a blocked value (blue edge labelled nchw<c>c)
    assert!(
        edges
            .iter()
            .any(|(_, t, a)| relayouts.contains(t) && a.contains("#1c5fd1") && a.contains("nchw"))
    );
}

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(c).is_file()))
    });
    if found.is_none() {
        let msg = "chromium not installed (scripts/setup-tools.sh)";
        if std::env::var("KILN_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Loads `page` in headless Chromium (fresh profile, no network services): the DOM after
/// load, the console messages, and a screenshot's bytes.
fn render(browser: &str, page: &Path, dir: &Path) -> (String, Vec<String>, Vec<u8>) {
    let run = |extra: &[&str]| {
        let profile = tempfile::tempdir_in(dir).unwrap();
        let o = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let shot = dir.join("shot.png");
    let _ = std::fs::remove_file(&shot);
    let o = run(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,1600",
    ]);
    let console: Vec<String> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    let png = std::fs::read(&shot).unwrap_or_default();
    let dom = String::from_utf8_lossy(&run(&["--dump-dom"]).stdout).into_owned();
    (dom, console, png)
}

/// PNG width and height from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24 && &png[..8] == b"\x89PNG\r\n\x1a\n" && &png[12..16] == b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn html_report_renders_in_chromium() {
    let d = tempfile::tempdir().unwrap();
    let m = root().join(TINY);
    // a profile to show, from kiln run
    let trace = d.path().join("trace.json");
    ok(kiln()
        .arg("run")
        .arg(&m)
        .arg("--input")
        .arg(root().join("examples/models/tiny_cnn_input.npy"))
        .arg("--output-dir")
        .arg(d.path())
        .args(["--profile-runs", "5", "--profile-json"])
        .arg(&trace)
        .arg("-q"));
    let page = d.path().join("report.html");
    ok(kiln()
        .arg("inspect")
        .arg(&m)
        .arg("--html")
        .arg(&page)
        .arg("--profile")
        .arg(&trace));
    let html = std::fs::read_to_string(&page).unwrap();
    for part in [
        "<svg id=\"memplan\"",
        "Profile: slowest nodes",
        "<td class=\"fused\">relu</td>",
        "conv2",
        "GFLOP/s",
    ] {
        assert!(html.contains(part), "no {part}");
    }
    // one rectangle per workspace buffer
    assert!(html.matches("class=\"buf\"").count() >= 4);
    // a bad trace is an error naming the file
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let o = kiln()
        .arg("inspect")
        .arg(&m)
        .args(["--html", "x.html", "--profile"])
        .arg(&bad)
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json"));
    assert!(!d.path().join("x.html").exists());

    let Some(browser) = chromium() else { return };
    // the check itself: a page with a console error and an exception is caught
    let control = d.path().join("control.html");
    std::fs::write(
        &control,
        "<html><body data-ready=\"0\"><p>x</p><script>console.error('kiln-control'); missingFn(); document.body.dataset.ready='1';</script></body></html>",
    )
    .unwrap();
    let (dom, console, _) = render(browser, &control, d.path());
    assert!(
        console.iter().any(|l| l.contains("kiln-control")),
        "{console:?}"
    );
    assert!(
        console.iter().any(|l| l.contains("Uncaught")),
        "{console:?}"
    );
    assert!(dom.contains("data-ready=\"0\""), "{dom}");

    let (dom, console, png) = render(browser, &page, d.path());
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(
        dom.contains("data-ready=\"1\""),
        "the report's script did not finish"
    );
    assert!(dom.contains("<rect class=\"buf\""));
    assert_eq!(png_size(&png), (1200, 1600));
    // a blank page of that size compresses to a few KB; the report has text, bars, a plan
    let blank = d.path().join("blank.html");
    std::fs::write(&blank, "<html><body></body></html>").unwrap();
    let (_, _, blank_png) = render(browser, &blank, d.path());
    assert!(
        png.len() > 4 * blank_png.len() && png.len() > 20_000,
        "screenshot {} bytes, blank {}",
        png.len(),
        blank_png.len()
    );
}

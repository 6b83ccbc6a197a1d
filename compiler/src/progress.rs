//! Progress bars for long compiles (indicatif): one bar per phase — load, optimize, llvm
//! kernels, codegen (by node), link — on stderr when it is a terminal; nothing at all when it
//! is not (a pipe, a file, CI) or with `--quiet`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bars of one `kiln` command (no-ops when disabled).
#[derive(Clone)]
pub struct Bars {
    mp: Option<MultiProgress>,
    /// `--quiet`: no notes either.
    quiet: bool,
    open: Arc<Mutex<HashMap<String, ProgressBar>>>,
}

/// A phase in progress; finishes (and stays on screen with its time) when dropped.
pub struct Phase(Option<ProgressBar>);

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish();
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>13.cyan} {spinner} {elapsed:.dim} {msg}")
        .expect("valid template")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>13.cyan} [{bar:30}] {pos}/{len} {elapsed:.dim} {msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

impl Bars {
    /// Bars on stderr when `enabled` and stderr is a terminal; `enabled` false is `--quiet`.
    pub fn new(enabled: bool) -> Bars {
        let mp = (enabled && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Bars {
            mp,
            quiet: !enabled,
            open: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.mp.is_some()
    }

    /// A spinner for a phase without steps (`load`, `optimize`).
    pub fn phase(&self, name: &str) -> Phase {
        Phase(self.mp.as_ref().map(|mp| {
            let b = mp.add(ProgressBar::new_spinner());
            b.set_style(spinner_style());
            b.set_prefix(name.to_string());
            b.enable_steady_tick(Duration::from_millis(100));
            b
        }))
    }

    /// The back end's progress hook: a bar per phase it reports (`llvm kernels`, `codegen`,
    /// `link`), finished when its last step is reported.
    pub fn backend(&self) -> Option<kiln_target_cpu::Progress> {
        let mp = self.mp.clone()?;
        let open = self.open.clone();
        Some(kiln_target_cpu::Progress(Arc::new(
            move |phase: &str, done: usize, total: usize| {
                let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
                let b = open.entry(phase.to_string()).or_insert_with(|| {
                    let b = if total > 1 {
                        let b = mp.add(ProgressBar::new(total as u64));
                        b.set_style(bar_style());
                        b
                    } else {
                        let b = mp.add(ProgressBar::new_spinner());
                        b.set_style(spinner_style());
                        b.enable_steady_tick(Duration::from_millis(100));
                        b
                    };
                    b.set_prefix(phase.to_string());
                    b
                });
                b.set_position(done as u64);
                if done >= total {
                    b.finish();
                    open.remove(phase);
                }
            },
        )))
    }

    /// A note (`wrote FILE`) above the bars, or plainly on stderr when there are none;
    /// nothing when quiet.
    pub fn println(&self, line: &str) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(line);
            }
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }
}

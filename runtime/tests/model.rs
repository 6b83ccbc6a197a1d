use std::cell::Cell;
use std::ffi::c_char;

use kiln_runtime::*;

static DIMS: [i64; 2] = [2, 2];
thread_local! {
    /// Calls of `add_one` on this thread (tests run in parallel).
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

const fn info(name: &'static [u8]) -> KilnTensorInfo {
    KilnTensorInfo {
        name: name.as_ptr() as *const c_char,
        dtype: KILN_DTYPE_F32,
        rank: 2,
        dims: DIMS.as_ptr(),
        nbytes: 16,
    }
}

static INPUTS: [KilnTensorInfo; 1] = [info(b"x\0")];
static OUTPUTS: [KilnTensorInfo; 1] = [info(b"y\0")];

/// Adds 1.0 to a [2,2] f32 input; checks its pointers like a compiled model does.
unsafe extern "C" fn add_one(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    workspace: *mut u8,
) -> i32 {
    CALLS.set(CALLS.get() + 1);
    unsafe {
        if inputs.is_null() || outputs.is_null() || (*inputs).is_null() || (*outputs).is_null() {
            return KILN_ERR_NULL;
        }
        if workspace.is_null() {
            return KILN_ERR_NULL;
        }
        if !(workspace as usize).is_multiple_of(64) {
            return KILN_ERR_ALIGN;
        }
        // use the workspace as scratch
        let ws = workspace as *mut f32;
        let x = *inputs as *const f32;
        let y = *outputs as *mut f32;
        for i in 0..4 {
            *ws.add(i) = x.add(i).read_unaligned() + 1.0;
        }
        for i in 0..4 {
            y.add(i).write_unaligned(*ws.add(i));
        }
    }
    KILN_OK
}

/// Same, but needs no workspace (accepts null).
unsafe extern "C" fn add_one_nows(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    _workspace: *mut u8,
) -> i32 {
    unsafe {
        let x = *inputs as *const f32;
        let y = *outputs as *mut f32;
        for i in 0..4 {
            y.add(i).write_unaligned(x.add(i).read_unaligned() + 1.0);
        }
    }
    KILN_OK
}

unsafe extern "C" fn add_one_pool(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    workspace: *mut u8,
    _pool: *const kiln_runtime::KilnPool,
) -> i32 {
    unsafe { add_one(inputs, outputs, workspace) }
}

unsafe extern "C" fn add_one_nows_pool(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    workspace: *mut u8,
    _pool: *const kiln_runtime::KilnPool,
) -> i32 {
    unsafe { add_one_nows(inputs, outputs, workspace) }
}

static NODES: [KilnNodeInfo; 2] = [
    KilnNodeInfo {
        name: c"plus".as_ptr(),
        op: c"add".as_ptr(),
        flops: 4,
    },
    KilnNodeInfo {
        name: c"out".as_ptr(),
        op: c"copy".as_ptr(),
        flops: 0,
    },
];

/// `add_one` as two profiled steps, like a compiled model's `run_profile`.
unsafe extern "C" fn add_one_profile(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    workspace: *mut u8,
    _pool: *const kiln_runtime::KilnPool,
    prof: *const KilnProfiler,
) -> i32 {
    unsafe {
        let p = &*prof;
        (p.begin.unwrap())(p.ctx, 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let r = add_one(inputs, outputs, workspace);
        (p.end.unwrap())(p.ctx, 0);
        (p.begin.unwrap())(p.ctx, 1);
        (p.end.unwrap())(p.ctx, 1);
        r
    }
}

const fn model(
    run: Option<KilnRunFn>,
    run_pool: Option<kiln_runtime::KilnRunPoolFn>,
    workspace_size: u64,
) -> KilnModel {
    KilnModel {
        abi_version: KILN_ABI_VERSION,
        name: c"fake".as_ptr(),
        n_inputs: 1,
        inputs: INPUTS.as_ptr(),
        n_outputs: 1,
        outputs: OUTPUTS.as_ptr(),
        workspace_size,
        workspace_align: 64,
        run,
        run_pool,
        n_nodes: 2,
        nodes: NODES.as_ptr(),
        run_profile: Some(add_one_profile),
    }
}

static FAKE: KilnModel = model(Some(add_one), Some(add_one_pool), 16);
static FAKE_NOWS: KilnModel = model(Some(add_one_nows), Some(add_one_nows_pool), 0);

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn descriptor_and_run() {
    let m = unsafe { Model::from_raw(&FAKE) }.unwrap();
    assert_eq!(m.name(), "fake");
    assert_eq!(m.workspace_size(), 16);
    assert_eq!(m.workspace_align(), 64);
    let ins = m.inputs();
    assert_eq!(
        ins,
        vec![TensorInfo {
            name: "x".into(),
            dtype: KILN_DTYPE_F32,
            dims: vec![2, 2],
            nbytes: 16
        }]
    );
    assert_eq!(ins[0].numel(), 4);
    assert_eq!(ins[0].to_string(), "x: f32[2, 2]");
    assert_eq!(m.outputs()[0].name, "y");

    let mut ws = m.workspace().unwrap();
    assert_eq!(ws.as_mut_ptr() as usize % 64, 0);
    let x = bytes(&[1.0, 2.0, 3.0, 4.0]);
    let mut y = vec![0u8; 16];
    let before = CALLS.get();
    for _ in 0..3 {
        m.run(&[&x], &mut [&mut y], &mut ws).unwrap();
    }
    assert_eq!(CALLS.get() - before, 3);
    assert_eq!(y, bytes(&[2.0, 3.0, 4.0, 5.0]));

    let out = m.run_f32(&[&[0.0, -1.0, 0.5, 10.0]]).unwrap();
    assert_eq!(out, vec![vec![1.0, 0.0, 1.5, 11.0]]);
}

#[test]
fn arity_and_size_errors() {
    let m = unsafe { Model::from_raw(&FAKE) }.unwrap();
    let mut ws = m.workspace().unwrap();
    let x = vec![0u8; 16];
    let mut y = vec![0u8; 16];
    let before = CALLS.get();
    let e = m.run(&[], &mut [&mut y], &mut ws).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Arity {
                what: "inputs",
                expected: 1,
                got: 0
            }
        ),
        "{e}"
    );
    let e = m.run(&[&x, &x], &mut [&mut y], &mut ws).unwrap_err();
    assert!(matches!(e, Error::Arity { got: 2, .. }), "{e}");
    let e = m.run(&[&x], &mut [], &mut ws).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Arity {
                what: "outputs",
                ..
            }
        ),
        "{e}"
    );
    let e = m.run(&[&x[..12]], &mut [&mut y], &mut ws).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Size {
                what: "input",
                expected: 16,
                got: 12,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("'x'"));
    let mut big = vec![0u8; 20];
    let e = m.run(&[&x], &mut [&mut big], &mut ws).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Size {
                what: "output",
                got: 20,
                ..
            }
        ),
        "{e}"
    );
    let e = m.run_f32(&[&[1.0; 3]]).unwrap_err();
    assert!(matches!(e, Error::Size { .. }), "{e}");
    // none of these reached the model
    assert_eq!(CALLS.get(), before);
}

#[test]
fn workspace_handling() {
    let m = unsafe { Model::from_raw(&FAKE) }.unwrap();
    let x = bytes(&[1.0; 4]);
    let mut y = vec![0u8; 16];
    // too small / null workspace is caught before calling the model
    let e = m
        .run(&[&x], &mut [&mut y], &mut Workspace::empty())
        .unwrap_err();
    assert!(matches!(e, Error::Workspace(_)), "{e}");
    // misaligned (a big enough workspace with a weaker alignment)
    let mut ws8 = Workspace::new(4096, 8).unwrap();
    let r = m.run(&[&x], &mut [&mut y], &mut ws8);
    if !(ws8.as_mut_ptr() as usize).is_multiple_of(64) {
        assert!(matches!(r, Err(Error::Workspace(_))));
    }
    // the raw entry point reports null and misalignment
    let run = FAKE.run.unwrap();
    let ip = [x.as_ptr()];
    let op = [y.as_mut_ptr()];
    let st = unsafe { run(ip.as_ptr(), op.as_ptr(), std::ptr::null_mut()) };
    assert_eq!(st, KILN_ERR_NULL);
    let mut ws = m.workspace().unwrap();
    let st = unsafe { run(ip.as_ptr(), op.as_ptr(), ws.as_mut_ptr().add(4)) };
    assert_eq!(st, KILN_ERR_ALIGN);
    let e = Error::Status(st);
    assert!(e.to_string().contains("misaligned"), "{e}");

    // models with no workspace get a null pointer and an empty workspace is fine
    let m0 = unsafe { Model::from_raw(&FAKE_NOWS) }.unwrap();
    let mut empty = Workspace::empty();
    assert!(empty.as_mut_ptr().is_null());
    m0.run(&[&x], &mut [&mut y], &mut empty).unwrap();
    assert_eq!(y, bytes(&[2.0; 4]));
    let mut ws0 = m0.workspace().unwrap();
    assert_eq!(ws0.size(), 0);
    m0.run(&[&x], &mut [&mut y], &mut ws0).unwrap();
}

#[test]
fn status_errors_are_mapped() {
    unsafe extern "C" fn fails(_: *const *const u8, _: *const *mut u8, _: *mut u8) -> i32 {
        7
    }
    static M: KilnModel = model(Some(fails), Some(add_one_pool), 0);
    let m = unsafe { Model::from_raw(&M) }.unwrap();
    let e = m.run_f32(&[&[0.0; 4]]).unwrap_err();
    assert!(matches!(e, Error::Status(7)), "{e}");

    static I32: [KilnTensorInfo; 1] = [KilnTensorInfo {
        dtype: KILN_DTYPE_I32,
        ..info(b"idx\0")
    }];
    static M2: KilnModel = KilnModel {
        outputs: I32.as_ptr(),
        ..model(Some(fails), Some(add_one_pool), 0)
    };
    let m = unsafe { Model::from_raw(&M2) }.unwrap();
    let e = m.run_f32(&[&[0.0; 4]]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "output 0 ('idx') has dtype i32, expected f32"
    );
}

#[test]
fn invalid_descriptors() {
    assert!(matches!(
        unsafe { Model::from_raw(std::ptr::null()) },
        Err(Error::NullPointer(_))
    ));
    let check = |d: KilnModel| {
        let b = Box::new(d);
        unsafe { Model::from_raw(&*b) }.unwrap_err()
    };
    let mut d = model(Some(add_one), Some(add_one_pool), 16);
    d.abi_version = KILN_ABI_VERSION + 1;
    assert!(matches!(
        check(d),
        Error::AbiVersion {
            found: 4,
            expected: 3
        }
    ));
    let mut d = model(Some(add_one), Some(add_one_pool), 16);
    d.run_profile = None;
    assert!(matches!(check(d), Error::NullPointer(_)));
    let mut d = model(None, Some(add_one_pool), 16);
    assert!(matches!(check(d), Error::NullPointer(_)));
    d = model(Some(add_one), None, 16);
    assert!(matches!(check(d), Error::NullPointer(_)));
    d = model(Some(add_one), Some(add_one_pool), 16);
    d.name = std::ptr::null();
    assert!(matches!(check(d), Error::NullPointer(_)));
    d = model(Some(add_one), Some(add_one_pool), 16);
    d.inputs = std::ptr::null();
    assert!(matches!(check(d), Error::NullPointer(_)));
    d = model(Some(add_one), Some(add_one_pool), 16);
    d.workspace_align = 48;
    assert!(matches!(check(d), Error::BadDescriptor(_)));

    static BAD_NBYTES: [KilnTensorInfo; 1] = [KilnTensorInfo {
        nbytes: 12,
        ..info(b"x\0")
    }];
    static BAD_DTYPE: [KilnTensorInfo; 1] = [KilnTensorInfo {
        dtype: 42,
        ..info(b"x\0")
    }];
    static NULL_DIMS: [KilnTensorInfo; 1] = [KilnTensorInfo {
        dims: std::ptr::null(),
        ..info(b"x\0")
    }];
    for (arr, nullp) in [
        (&BAD_NBYTES, false),
        (&BAD_DTYPE, false),
        (&NULL_DIMS, true),
    ] {
        d = model(Some(add_one), Some(add_one_pool), 16);
        d.outputs = arr.as_ptr();
        let e = check(d);
        assert_eq!(matches!(e, Error::NullPointer(_)), nullp, "{e}");
    }
}

#[test]
fn model_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<Workspace>();
    let m = unsafe { Model::from_raw(&FAKE) }.unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let m = &m;
            s.spawn(move || {
                let v = t as f32;
                let out = m.run_f32(&[&[v; 4]]).unwrap();
                assert_eq!(out[0], vec![v + 1.0; 4]);
            });
        }
    });
}

#[cfg(feature = "dylib")]
#[test]
fn load_errors() {
    let e = Model::load(std::path::Path::new("/nonexistent/libmodel.so")).unwrap_err();
    assert!(matches!(e, Error::Load { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/libmodel.so"));
}

#[test]
fn profiled_runs() {
    let m = unsafe { Model::from_raw(&FAKE) }.unwrap();
    assert!(m.can_profile());
    assert_eq!(m.nodes().len(), 2);
    assert_eq!(m.nodes()[0].op, "add");
    let x = bytes(&[1.0, 2.0, 3.0, 4.0]);
    let mut y = vec![0u8; 16];
    let mut ws = m.workspace().unwrap();
    let p = m.profile(&[&x], &mut [&mut y], &mut ws, None, 3).unwrap();
    assert_eq!(y, bytes(&[2.0, 3.0, 4.0, 5.0]));
    assert_eq!(p.runs.len(), 3);
    let st = p.stats();
    assert_eq!(st[0].name, "plus");
    assert!(st[0].ms >= 2.0, "{}", p.table());
    assert!(st[0].percent > 99.0);
    assert!(p.run_ms() >= st[0].ms);
    let trace = p.chrome_trace();
    assert_eq!(trace.matches("\"cat\":\"Node\"").count(), 6);
    // a profile of another model is refused
    let mut other = Profile::new("other", &[]);
    assert!(
        m.run_profiled(&[&x], &mut [&mut y], &mut ws, None, &mut other)
            .is_err()
    );
}

/// A descriptor of ABI version 2 ends after `run_pool`: it loads and runs, without a profile.
#[test]
fn abi_v2_descriptor_loads_without_profile() {
    #[repr(C)]
    struct V2 {
        abi_version: u32,
        name: *const c_char,
        n_inputs: u32,
        inputs: *const KilnTensorInfo,
        n_outputs: u32,
        outputs: *const KilnTensorInfo,
        workspace_size: u64,
        workspace_align: u32,
        run: Option<KilnRunFn>,
        run_pool: Option<KilnRunPoolFn>,
    }
    assert_eq!(std::mem::size_of::<V2>(), 80);
    // exactly 80 bytes allocated: reading a v3 field would be caught by Miri / ASan
    let v2 = Box::new(V2 {
        abi_version: 2,
        name: c"old".as_ptr(),
        n_inputs: 1,
        inputs: INPUTS.as_ptr(),
        n_outputs: 1,
        outputs: OUTPUTS.as_ptr(),
        workspace_size: 16,
        workspace_align: 64,
        run: Some(add_one),
        run_pool: Some(add_one_pool),
    });
    let m = unsafe { Model::from_raw((&*v2 as *const V2).cast::<KilnModel>()) }.unwrap();
    assert_eq!(m.name(), "old");
    assert!(!m.can_profile());
    assert!(m.nodes().is_empty());
    assert_eq!(m.run_f32(&[&[1.0; 4]]).unwrap(), vec![vec![2.0; 4]]);
    let mut ws = m.workspace().unwrap();
    let (x, mut y) = (bytes(&[0.0; 4]), vec![0u8; 16]);
    let e = m
        .profile(&[&x], &mut [&mut y], &mut ws, None, 1)
        .unwrap_err();
    assert!(e.to_string().contains("version 2"), "{e}");
}

use kiln_runtime::npy::{self, Npy};
use kiln_runtime::*;

#[test]
fn round_trip_all_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    for code in [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16] {
        let esize = dtype_size(code).unwrap();
        for shape in [vec![], vec![3], vec![2, 3], vec![0, 4], vec![1, 2, 1, 3]] {
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n * esize).map(|i| (i * 7 % 251) as u8).collect();
            let a = Npy::new(code, shape.clone(), data).unwrap();
            let p = dir.path().join(format!("a{code}.npy"));
            npy::write(&p, &a).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            // data starts on a 64-byte boundary
            assert_eq!((bytes.len() - a.data.len()) % 64, 0);
            assert_eq!(npy::read(&p).unwrap(), a);
            assert_eq!(npy::from_bytes(&bytes).unwrap(), a);
        }
    }
    // no temporary files left behind
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn f32_helpers() {
    let a = Npy::from_f32(&[2, 2], &[1.0, -2.5, 3.0, f32::INFINITY]);
    assert_eq!(a.dtype, KILN_DTYPE_F32);
    assert_eq!(a.to_f32().unwrap(), vec![1.0, -2.5, 3.0, f32::INFINITY]);
    let b = Npy::new(KILN_DTYPE_I32, vec![1], vec![0; 4]).unwrap();
    assert!(b.to_f32().is_err());
    assert!(Npy::new(KILN_DTYPE_F32, vec![3], vec![0; 4]).is_err());
    assert!(Npy::new(99, vec![1], vec![0; 4]).is_err());
    assert!(Npy::new(KILN_DTYPE_F32, vec![usize::MAX, 2], vec![]).is_err());
}

fn file_with_header(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut v = b"\x93NUMPY".to_vec();
    v.push(version);
    v.push(0);
    if version == 1 {
        v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        v.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    v.extend_from_slice(dict.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn reads_v2_v3_and_variants() {
    let d = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
    let data = [0u8, 0, 128, 63, 0, 0, 0, 64];
    for ver in [1, 2, 3] {
        let a = npy::from_bytes(&file_with_header(ver, d, &data)).unwrap();
        assert_eq!(a.shape, vec![2]);
        assert_eq!(a.to_f32().unwrap(), vec![1.0, 2.0]);
    }
    // double quotes, key order, no trailing comma, Python 2 longs
    let d = "{\"shape\": (1L, 2L), \"fortran_order\": False, \"descr\": \"<f4\"}";
    let a = npy::from_bytes(&file_with_header(1, d, &data)).unwrap();
    assert_eq!(a.shape, vec![1, 2]);
    // single-byte types with any byte order
    let d = "{'descr': '|u1', 'fortran_order': False, 'shape': (), }";
    let a = npy::from_bytes(&file_with_header(1, d, &[7])).unwrap();
    assert_eq!((a.dtype, a.shape.len(), a.data[0]), (KILN_DTYPE_U8, 0, 7));
}

#[test]
fn rejects_corrupt_files() {
    let good = Npy::from_f32(&[2], &[1.0, 2.0]).to_bytes();
    let data = [0u8; 8];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("magic", b"\x93NUMPZ\x01\x00\x10\x00".to_vec()),
        ("short", good[..8].to_vec()),
        ("truncated header", good[..40].to_vec()),
        ("truncated data", good[..good.len() - 1].to_vec()),
        ("trailing data", [good.clone(), vec![0]].concat()),
        (
            "version",
            file_with_header(
                4,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
                &data,
            ),
        ),
        (
            "huge header len",
            [
                b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec(),
                vec![b' '; 64],
            ]
            .concat(),
        ),
        (
            "fortran",
            file_with_header(
                1,
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2,)}",
                &data,
            ),
        ),
        (
            "big endian",
            file_with_header(
                1,
                "{'descr': '>f4', 'fortran_order': False, 'shape': (2,)}",
                &data,
            ),
        ),
        (
            "complex",
            file_with_header(
                1,
                "{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}",
                &data,
            ),
        ),
        (
            "structured",
            file_with_header(
                1,
                "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (1,)}",
                &data,
            ),
        ),
        (
            "absurd shape",
            file_with_header(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8)}",
                &data,
            ),
        ),
        (
            "large shape",
            file_with_header(
                1,
                "{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000,)}",
                &data,
            ),
        ),
        (
            "negative dim",
            file_with_header(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}",
                &data,
            ),
        ),
        (
            "missing shape",
            file_with_header(1, "{'descr': '<f4', 'fortran_order': False}", &data),
        ),
        (
            "missing fortran",
            file_with_header(1, "{'descr': '<f4', 'shape': (2,)}", &data),
        ),
        (
            "unterminated",
            file_with_header(
                1,
                "{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}",
                &data,
            ),
        ),
        (
            "garbage",
            file_with_header(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} xx",
                &data,
            ),
        ),
        (
            "not utf8",
            file_with_header(1, "{'descr': '\u{e9}'}", &data),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, bytes) in cases {
        let e = npy::from_bytes(&bytes);
        assert!(e.is_err(), "{what}: {e:?}");
        let p = dir.path().join("bad.npy");
        std::fs::write(&p, &bytes).unwrap();
        let e = npy::read(&p).expect_err(what);
        let msg = e.to_string();
        assert!(msg.contains("bad.npy"), "{what}: {msg}");
    }
    assert!(npy::read(&dir.path().join("missing.npy")).is_err());
}

#[test]
fn atomic_write_replaces_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    npy::write(&p, &Npy::from_f32(&[1], &[1.0])).unwrap();
    npy::write(&p, &Npy::from_f32(&[2], &[2.0, 3.0])).unwrap();
    assert_eq!(npy::read(&p).unwrap().to_f32().unwrap(), vec![2.0, 3.0]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let bad = Npy {
        dtype: KILN_DTYPE_F32,
        shape: vec![3],
        data: vec![0; 4],
    };
    assert!(npy::write(&p, &bad).is_err());
    assert!(
        npy::write(
            &dir.path().join("no/such/dir.npy"),
            &Npy::from_f32(&[0], &[])
        )
        .is_err()
    );
}

#[test]
fn numpy_compat() {
    let py = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    if !std::path::Path::new(py).exists() {
        eprintln!("skipping: no {py}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import numpy as np, sys
d = sys.argv[1]
np.save(d + '/a.npy', np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5)
np.save(d + '/b.npy', np.array([1, -2], dtype=np.int64))
np.save(d + '/c.npy', np.array(True))
np.save(d + '/f.npy', np.asfortranarray(np.ones((2, 3), dtype=np.float32)))
b = np.load(d + '/rust.npy')
assert b.dtype == np.float16 and b.shape == (3, 1), (b.dtype, b.shape)
assert list(b[:, 0]) == [1.0, 2.0, -0.5]
"#;
    // f16 1.0, 2.0, -0.5
    let f16 = Npy::new(10, vec![3, 1], vec![0, 0x3c, 0, 0x40, 0, 0xb8]).unwrap();
    npy::write(&dir.path().join("rust.npy"), &f16).unwrap();
    let st = std::process::Command::new(py)
        .args(["-c", script])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let a = npy::read(&dir.path().join("a.npy")).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.to_f32().unwrap(), vec![0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
    let b = npy::read(&dir.path().join("b.npy")).unwrap();
    assert_eq!((b.dtype, b.data.len()), (KILN_DTYPE_I64, 16));
    let c = npy::read(&dir.path().join("c.npy")).unwrap();
    assert_eq!(
        (c.dtype, c.shape.len(), c.data.clone()),
        (KILN_DTYPE_BOOL, 0, vec![1])
    );
    assert!(npy::read(&dir.path().join("f.npy")).is_err());
}

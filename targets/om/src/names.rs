//! GraphEngine names: the two dtype enums (the proto `DataType` of tensor descriptors and
//! C++ `ge::DataType` of attributes), `ge::Format` numbers, and the elementwise op types that
//! correspond to IR ops one to one (shared by the AIR/OM writers and the AIR importer).

use kiln_ir::DType;
use kiln_ir::ops::{BinaryOp, CmpOp, UnaryOp};

/// kiln dtype of a tensor descriptor's `DataType` (the proto enum: `DT_FLOAT = 1`).
pub fn dtype_of_proto(code: i32) -> Result<DType, String> {
    Ok(match code {
        1 => DType::F32,
        2 => DType::F16,
        3 => DType::I8,
        4 => DType::U8,
        5 => DType::I16,
        6 => DType::U16,
        7 => DType::I32,
        8 => DType::I64,
        9 => DType::U32,
        10 => DType::U64,
        11 => DType::Bool,
        12 => DType::F64,
        27 => DType::BF16,
        c => {
            let name = crate::proto::DataType::try_from(c)
                .map(|d| d.as_str_name().to_string())
                .unwrap_or_else(|_| format!("code {c}"));
            return Err(format!("unsupported element type {name}"));
        }
    })
}

/// The proto `DataType` of a kiln dtype.
pub fn proto_of_dtype(d: DType) -> i32 {
    match d {
        DType::F32 => 1,
        DType::F16 => 2,
        DType::I8 => 3,
        DType::U8 => 4,
        DType::I16 => 5,
        DType::U16 => 6,
        DType::I32 => 7,
        DType::I64 => 8,
        DType::U32 => 9,
        DType::U64 => 10,
        DType::Bool => 11,
        DType::F64 => 12,
        DType::BF16 => 27,
    }
}

/// C++ `ge::DataType` numbering (attributes such as `dst_type`, `data_type`, `dt`).
const GE_DTYPES: [(i64, DType); 13] = [
    (0, DType::F32),
    (1, DType::F16),
    (2, DType::I8),
    (3, DType::I32),
    (4, DType::U8),
    (6, DType::I16),
    (7, DType::U16),
    (8, DType::U32),
    (9, DType::I64),
    (10, DType::U64),
    (11, DType::F64),
    (12, DType::Bool),
    (27, DType::BF16),
];

/// kiln dtype of a C++ `ge::DataType` (attribute values).
pub fn dtype_of_ge(code: i64) -> Result<DType, String> {
    GE_DTYPES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, d)| *d)
        .ok_or_else(|| format!("unsupported ge::DataType {code}"))
}

/// The C++ `ge::DataType` of a kiln dtype.
pub fn ge_of_dtype(d: DType) -> i64 {
    GE_DTYPES
        .iter()
        .find(|(_, x)| *x == d)
        .map_or(28, |(c, _)| *c)
}

/// `ge::Format` numbers (the `format_for_int` / `origin_format_for_int` tensor attributes).
pub mod format {
    pub const NCHW: i64 = 0;
    pub const NHWC: i64 = 1;
    pub const ND: i64 = 2;
    pub const NC1HWC0: i64 = 3;
    pub const FRACTAL_Z: i64 = 4;
    pub const HWCN: i64 = 16;
    pub const FRACTAL_NZ: i64 = 29;
}

/// GE elementwise unary op types and their IR op.
pub const UNARY: &[(&str, UnaryOp)] = &[
    ("Relu", UnaryOp::Relu),
    ("Sigmoid", UnaryOp::Sigmoid),
    ("Tanh", UnaryOp::Tanh),
    ("Sqrt", UnaryOp::Sqrt),
    ("Exp", UnaryOp::Exp),
    ("Log", UnaryOp::Log),
    ("Neg", UnaryOp::Neg),
    ("Abs", UnaryOp::Abs),
    ("Reciprocal", UnaryOp::Reciprocal),
    ("Floor", UnaryOp::Floor),
    ("Ceil", UnaryOp::Ceil),
    ("Round", UnaryOp::Round),
    ("Sign", UnaryOp::Sign),
    ("Erf", UnaryOp::Erf),
    ("Sin", UnaryOp::Sin),
    ("Cos", UnaryOp::Cos),
    ("HardSwish", UnaryOp::HardSwish),
    ("Softplus", UnaryOp::Softplus),
    ("Softsign", UnaryOp::Softsign),
    ("Mish", UnaryOp::Mish),
];

/// GE elementwise binary op types and their IR op (broadcasting like NumPy).
pub const BINARY: &[(&str, BinaryOp)] = &[
    ("Add", BinaryOp::Add),
    ("AddV2", BinaryOp::Add),
    ("Sub", BinaryOp::Sub),
    ("Mul", BinaryOp::Mul),
    ("RealDiv", BinaryOp::Div),
    ("Div", BinaryOp::Div),
    ("Maximum", BinaryOp::Max),
    ("Minimum", BinaryOp::Min),
    ("Pow", BinaryOp::Pow),
];

/// GE comparisons: the IR comparison and whether the result is negated (`NotEqual`).
pub const COMPARE: &[(&str, CmpOp, bool)] = &[
    ("Equal", CmpOp::Equal, false),
    ("NotEqual", CmpOp::Equal, true),
    ("Less", CmpOp::Less, false),
    ("LessEqual", CmpOp::LessOrEqual, false),
    ("Greater", CmpOp::Greater, false),
    ("GreaterEqual", CmpOp::GreaterOrEqual, false),
];

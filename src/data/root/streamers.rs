//! `TStreamerInfo` records for the classes a written TTree uses.
//!
//! ROOT stores, under the key `StreamerInfo` (a `TList`), one `TStreamerInfo`
//! per class version in the file: its name, checksum, class version and a
//! `TObjArray` of `TStreamerElement`s (base classes, basic members, pointers,
//! strings, embedded objects). Readers use it for schema evolution. The
//! element layout follows ROOT's `TStreamerElement` v4 (`TNamed`, `fType`,
//! `fSize`, `fArrayLength`, `fArrayDim`, `fMaxIndex[5]`, `fTypeName`) with the
//! subclass members of `TStreamerBase` (v3: `fBaseVersion`) and
//! `TStreamerBasicPointer` (v2: `fCountVersion`, `fCountName`, `fCountClass`);
//! see uproot `streamers.py` and groot `rdict/streamer.go`. The class
//! versions and checksums below are those of ROOT 6 (as found in the
//! StreamerInfo of the CMS NanoAOD reference file).

use super::cursor::WBuf;
use super::write::ObjWriter;

/// One streamer element description.
enum El {
    /// Base class: (name, fType 0/66/67, base checksum, base version).
    Base(&'static str, i32, u32, i32),
    /// Basic member: (name, fType, fSize, type name).
    Basic(&'static str, i32, i32, &'static str),
    /// Counted pointer member: (name, fType, type name, count name, count class, count version).
    BasicPtr(&'static str, i32, &'static str, &'static str, &'static str, i32),
    /// `TString` member.
    Str(&'static str),
    /// Embedded object: (element class, name, fType, fSize, type name).
    Obj(&'static str, &'static str, i32, i32, &'static str),
}

struct ClassInfo {
    name: &'static str,
    version: i32,
    checksum: u32,
    elements: Vec<El>,
}

const CK_TOBJECT: u32 = 0x901b_c02d;
const CK_TNAMED: u32 = 0xdfb7_4a3c;
const CK_TATTLINE: u32 = 0x9407_4549;
const CK_TATTFILL: u32 = 0xffd9_2a92;
const CK_TATTMARKER: u32 = 0x291d_8bec;
const CK_TCOLLECTION: u32 = 0x57e3_cb9c;
const CK_TSEQCOLLECTION: u32 = 0xfc6c_3bc6;
const CK_TLEAF: u32 = 0x6d1e_8152;

fn leaf_class(name: &'static str, checksum: u32, ftype: i32, size: i32, tn: &'static str) -> ClassInfo {
    ClassInfo {
        name,
        version: 1,
        checksum,
        elements: vec![
            El::Base("TLeaf", 0, CK_TLEAF, 2),
            El::Basic("fMinimum", ftype, size, tn),
            El::Basic("fMaximum", ftype, size, tn),
        ],
    }
}

fn classes(leaf_classes: &[&str]) -> Vec<ClassInfo> {
    use El::*;
    let mut v = vec![
        ClassInfo {
            name: "TObject",
            version: 1,
            checksum: CK_TOBJECT,
            elements: vec![Basic("fUniqueID", 13, 4, "unsigned int"), Basic("fBits", 15, 4, "unsigned int")],
        },
        ClassInfo {
            name: "TNamed",
            version: 1,
            checksum: CK_TNAMED,
            elements: vec![Base("TObject", 66, CK_TOBJECT, 1), Str("fName"), Str("fTitle")],
        },
        ClassInfo {
            name: "TAttLine",
            version: 2,
            checksum: CK_TATTLINE,
            elements: vec![
                Basic("fLineColor", 2, 2, "short"),
                Basic("fLineStyle", 2, 2, "short"),
                Basic("fLineWidth", 2, 2, "short"),
            ],
        },
        ClassInfo {
            name: "TAttFill",
            version: 2,
            checksum: CK_TATTFILL,
            elements: vec![Basic("fFillColor", 2, 2, "short"), Basic("fFillStyle", 2, 2, "short")],
        },
        ClassInfo {
            name: "TAttMarker",
            version: 2,
            checksum: CK_TATTMARKER,
            elements: vec![
                Basic("fMarkerColor", 2, 2, "short"),
                Basic("fMarkerStyle", 2, 2, "short"),
                Basic("fMarkerSize", 5, 4, "float"),
            ],
        },
        ClassInfo {
            name: "ROOT::TIOFeatures",
            version: 1,
            checksum: 0x1aa1_2f10,
            elements: vec![Basic("fIOBits", 11, 1, "unsigned char")],
        },
        ClassInfo {
            name: "TCollection",
            version: 3,
            checksum: CK_TCOLLECTION,
            elements: vec![Base("TObject", 66, CK_TOBJECT, 1), Str("fName"), Basic("fSize", 3, 4, "int")],
        },
        ClassInfo {
            name: "TSeqCollection",
            version: 0,
            checksum: CK_TSEQCOLLECTION,
            elements: vec![Base("TCollection", 0, CK_TCOLLECTION, 3)],
        },
        ClassInfo {
            name: "TObjArray",
            version: 3,
            checksum: 0xa99e_6552,
            elements: vec![
                Base("TSeqCollection", 0, CK_TSEQCOLLECTION, 0),
                Basic("fLowerBound", 3, 4, "int"),
                Basic("fLast", 3, 4, "int"),
            ],
        },
        ClassInfo {
            name: "TBranch",
            version: 13,
            checksum: 0x1097_8aac,
            elements: vec![
                Base("TNamed", 67, CK_TNAMED, 1),
                Base("TAttFill", 0, CK_TATTFILL, 2),
                Basic("fCompress", 3, 4, "int"),
                Basic("fBasketSize", 3, 4, "int"),
                Basic("fEntryOffsetLen", 3, 4, "int"),
                Basic("fWriteBasket", 3, 4, "int"),
                Basic("fEntryNumber", 16, 8, "Long64_t"),
                Obj("TStreamerObjectAny", "fIOFeatures", 62, 1, "ROOT::TIOFeatures"),
                Basic("fOffset", 3, 4, "int"),
                Basic("fMaxBaskets", 6, 4, "int"),
                Basic("fSplitLevel", 3, 4, "int"),
                Basic("fEntries", 16, 8, "Long64_t"),
                Basic("fFirstEntry", 16, 8, "Long64_t"),
                Basic("fTotBytes", 16, 8, "Long64_t"),
                Basic("fZipBytes", 16, 8, "Long64_t"),
                Obj("TStreamerObject", "fBranches", 61, 64, "TObjArray"),
                Obj("TStreamerObject", "fLeaves", 61, 64, "TObjArray"),
                Obj("TStreamerObject", "fBaskets", 61, 64, "TObjArray"),
                BasicPtr("fBasketBytes", 43, "int*", "fMaxBaskets", "TBranch", 13),
                BasicPtr("fBasketEntry", 56, "Long64_t*", "fMaxBaskets", "TBranch", 13),
                BasicPtr("fBasketSeek", 56, "Long64_t*", "fMaxBaskets", "TBranch", 13),
                Str("fFileName"),
            ],
        },
        ClassInfo {
            name: "TLeaf",
            version: 2,
            checksum: CK_TLEAF,
            elements: vec![
                Base("TNamed", 67, CK_TNAMED, 1),
                Basic("fLen", 3, 4, "int"),
                Basic("fLenType", 3, 4, "int"),
                Basic("fOffset", 3, 4, "int"),
                Basic("fIsRange", 18, 1, "bool"),
                Basic("fIsUnsigned", 18, 1, "bool"),
                Obj("TStreamerObjectPointer", "fLeafCount", 64, 8, "TLeaf*"),
            ],
        },
    ];
    for lc in leaf_classes {
        let c = match *lc {
            "TLeafO" => leaf_class("TLeafO", 0x02ae_48d3, 18, 1, "bool"),
            "TLeafB" => leaf_class("TLeafB", 0x0f1e_4b5e, 1, 1, "char"),
            "TLeafI" => leaf_class("TLeafI", 0x7e6a_ae19, 3, 4, "int"),
            "TLeafL" => leaf_class("TLeafL", 0xde32_0862, 16, 8, "Long64_t"),
            "TLeafF" => leaf_class("TLeafF", 0x3add_9d72, 5, 4, "float"),
            "TLeafD" => leaf_class("TLeafD", 0x118e_8776, 8, 8, "double"),
            // TLeafS: no reference checksum at hand; readers do not need it.
            _ => continue,
        };
        v.push(c);
    }
    v.push(ClassInfo {
        name: "TTree",
        version: 20,
        checksum: 0x7264_e07f,
        elements: vec![
            Base("TNamed", 67, CK_TNAMED, 1),
            Base("TAttLine", 0, CK_TATTLINE, 2),
            Base("TAttFill", 0, CK_TATTFILL, 2),
            Base("TAttMarker", 0, CK_TATTMARKER, 2),
            Basic("fEntries", 16, 8, "Long64_t"),
            Basic("fTotBytes", 16, 8, "Long64_t"),
            Basic("fZipBytes", 16, 8, "Long64_t"),
            Basic("fSavedBytes", 16, 8, "Long64_t"),
            Basic("fFlushedBytes", 16, 8, "Long64_t"),
            Basic("fWeight", 8, 8, "double"),
            Basic("fTimerInterval", 3, 4, "int"),
            Basic("fScanField", 3, 4, "int"),
            Basic("fUpdate", 3, 4, "int"),
            Basic("fDefaultEntryOffsetLen", 3, 4, "int"),
            Basic("fNClusterRange", 6, 4, "int"),
            Basic("fMaxEntries", 16, 8, "Long64_t"),
            Basic("fMaxEntryLoop", 16, 8, "Long64_t"),
            Basic("fMaxVirtualSize", 16, 8, "Long64_t"),
            Basic("fAutoSave", 16, 8, "Long64_t"),
            Basic("fAutoFlush", 16, 8, "Long64_t"),
            Basic("fEstimate", 16, 8, "Long64_t"),
            BasicPtr("fClusterRangeEnd", 56, "Long64_t*", "fNClusterRange", "TTree", 20),
            BasicPtr("fClusterSize", 56, "Long64_t*", "fNClusterRange", "TTree", 20),
            Obj("TStreamerObjectAny", "fIOFeatures", 62, 1, "ROOT::TIOFeatures"),
            Obj("TStreamerObject", "fBranches", 61, 64, "TObjArray"),
            Obj("TStreamerObject", "fLeaves", 61, 64, "TObjArray"),
            Obj("TStreamerObjectPointer", "fAliases", 64, 8, "TList*"),
            Obj("TStreamerObjectAny", "fIndexValues", 62, 24, "TArrayD"),
            Obj("TStreamerObjectAny", "fIndex", 62, 24, "TArrayI"),
            Obj("TStreamerObjectPointer", "fTreeIndex", 64, 8, "TVirtualIndex*"),
            Obj("TStreamerObjectPointer", "fFriends", 64, 8, "TList*"),
            Obj("TStreamerObjectPointer", "fUserInfo", 64, 8, "TList*"),
            Obj("TStreamerObjectPointer", "fBranchRef", 64, 8, "TBranchRef*"),
        ],
    });
    v
}

const CK_TLIST: u32 = 0x69c5_c3bb;
const CK_TATTAXIS: u32 = 0x5c6f_ff3e;
const CK_TARRAY: u32 = 0x0070_21b2;
const CK_TARRAYD: u32 = 0x7139_5b34;
const CK_TH1: u32 = 0x1c37_40c4;

/// The classes of a file holding `TH1D`s (ROOT 6 versions and checksums, as
/// in the streamer infos uproot writes with a histogram; `TArray` from groot's
/// `rdict` database).
fn th1d_classes() -> Vec<ClassInfo> {
    use El::*;
    let mut v: Vec<ClassInfo> = classes(&[])
        .into_iter()
        .filter(|c| {
            matches!(
                c.name,
                "TObject" | "TNamed" | "TAttLine" | "TAttFill" | "TAttMarker" | "TCollection" | "TSeqCollection"
            )
        })
        .collect();
    v.extend([
        ClassInfo {
            name: "TList",
            version: 5,
            checksum: CK_TLIST,
            elements: vec![Base("TSeqCollection", 0, CK_TSEQCOLLECTION, 0)],
        },
        ClassInfo {
            name: "THashList",
            version: 0,
            checksum: 0xcc7e_49c1,
            elements: vec![Base("TList", 0, CK_TLIST, 5)],
        },
        ClassInfo { name: "TArray", version: 1, checksum: CK_TARRAY, elements: vec![Basic("fN", 3, 4, "int")] },
        ClassInfo {
            name: "TArrayD",
            version: 1,
            checksum: CK_TARRAYD,
            elements: vec![Base("TArray", 0, CK_TARRAY, 1), BasicPtr("fArray", 48, "double*", "fN", "TArray", 1)],
        },
        ClassInfo {
            name: "TAttAxis",
            version: 4,
            checksum: CK_TATTAXIS,
            elements: vec![
                Basic("fNdivisions", 3, 4, "int"),
                Basic("fAxisColor", 2, 2, "short"),
                Basic("fLabelColor", 2, 2, "short"),
                Basic("fLabelFont", 2, 2, "short"),
                Basic("fLabelOffset", 5, 4, "float"),
                Basic("fLabelSize", 5, 4, "float"),
                Basic("fTickLength", 5, 4, "float"),
                Basic("fTitleOffset", 5, 4, "float"),
                Basic("fTitleSize", 5, 4, "float"),
                Basic("fTitleColor", 2, 2, "short"),
                Basic("fTitleFont", 2, 2, "short"),
            ],
        },
        ClassInfo {
            name: "TAxis",
            version: 10,
            checksum: 0x5a49_6e70,
            elements: vec![
                Base("TNamed", 67, CK_TNAMED, 1),
                Base("TAttAxis", 0, CK_TATTAXIS, 4),
                Basic("fNbins", 3, 4, "int"),
                Basic("fXmin", 8, 8, "double"),
                Basic("fXmax", 8, 8, "double"),
                Obj("TStreamerObjectAny", "fXbins", 62, 24, "TArrayD"),
                Basic("fFirst", 3, 4, "int"),
                Basic("fLast", 3, 4, "int"),
                Basic("fBits2", 12, 2, "unsigned short"),
                Basic("fTimeDisplay", 18, 1, "bool"),
                Str("fTimeFormat"),
                Obj("TStreamerObjectPointer", "fLabels", 64, 8, "THashList*"),
                Obj("TStreamerObjectPointer", "fModLabs", 64, 8, "TList*"),
            ],
        },
        ClassInfo {
            name: "TH1",
            version: 8,
            checksum: CK_TH1,
            elements: vec![
                Base("TNamed", 67, CK_TNAMED, 1),
                Base("TAttLine", 0, CK_TATTLINE, 2),
                Base("TAttFill", 0, CK_TATTFILL, 2),
                Base("TAttMarker", 0, CK_TATTMARKER, 2),
                Basic("fNcells", 3, 4, "int"),
                Obj("TStreamerObject", "fXaxis", 61, 216, "TAxis"),
                Obj("TStreamerObject", "fYaxis", 61, 216, "TAxis"),
                Obj("TStreamerObject", "fZaxis", 61, 216, "TAxis"),
                Basic("fBarOffset", 2, 2, "short"),
                Basic("fBarWidth", 2, 2, "short"),
                Basic("fEntries", 8, 8, "double"),
                Basic("fTsumw", 8, 8, "double"),
                Basic("fTsumw2", 8, 8, "double"),
                Basic("fTsumwx", 8, 8, "double"),
                Basic("fTsumwx2", 8, 8, "double"),
                Basic("fMaximum", 8, 8, "double"),
                Basic("fMinimum", 8, 8, "double"),
                Basic("fNormFactor", 8, 8, "double"),
                Obj("TStreamerObjectAny", "fContour", 62, 24, "TArrayD"),
                Obj("TStreamerObjectAny", "fSumw2", 62, 24, "TArrayD"),
                Str("fOption"),
                Obj("TStreamerObjectPointer", "fFunctions", 63, 8, "TList*"),
                Basic("fBufferSize", 6, 4, "int"),
                BasicPtr("fBuffer", 48, "double*", "fBufferSize", "TH1", 8),
                Basic("fBinStatErrOpt", 3, 4, "TH1::EBinErrorOpt"),
                Basic("fStatOverflows", 3, 4, "TH1::EStatOverflows"),
            ],
        },
        ClassInfo {
            name: "TH1D",
            version: 3,
            checksum: 0xf9b1_569f,
            elements: vec![Base("TH1", 0, CK_TH1, 8), Base("TArrayD", 0, CK_TARRAYD, 1)],
        },
    ]);
    v
}

/// Writes `TObject` (version 1) with the given bits.
pub(super) fn tobject(w: &mut WBuf, bits: u32) {
    w.i16(1);
    w.u32(0);
    w.u32(bits);
}

/// Writes a `TNamed` (with byte count).
pub(super) fn tnamed(w: &mut WBuf, name: &str, title: &str, bits: u32) {
    let at = w.begin_obj(1);
    tobject(w, bits);
    w.tstring(name);
    w.tstring(title);
    w.end_obj(at);
}

/// `TStreamerElement` v4 common part.
fn element_common(w: &mut WBuf, name: &str, title: &str, ftype: i32, size: i32, max1: u32, tn: &str) {
    let at = w.begin_obj(4);
    tnamed(w, name, title, 0x0300_0000);
    w.i32(ftype);
    w.i32(size);
    w.i32(0); // fArrayLength
    w.i32(0); // fArrayDim
    w.i32(0);
    w.u32(max1); // fMaxIndex[1] carries the base class checksum for bases
    w.i32(0);
    w.i32(0);
    w.i32(0);
    w.tstring(tn);
    w.end_obj(at);
}

fn write_element(ow: &mut ObjWriter, w: &mut WBuf, e: &El) {
    match e {
        El::Base(name, ftype, ck, bv) => {
            ow.write_any(w, "TStreamerBase", |_, w| {
                let at = w.begin_obj(3);
                element_common(w, name, "", *ftype, 0, *ck, "BASE");
                w.i32(*bv);
                w.end_obj(at);
            });
        }
        El::Basic(name, ftype, size, tn) => {
            ow.write_any(w, "TStreamerBasicType", |_, w| {
                let at = w.begin_obj(2);
                element_common(w, name, "", *ftype, *size, 0, tn);
                w.end_obj(at);
            });
        }
        El::BasicPtr(name, ftype, tn, cname, cclass, cver) => {
            ow.write_any(w, "TStreamerBasicPointer", |_, w| {
                let at = w.begin_obj(2);
                let title = format!("[{cname}]");
                element_common(w, name, &title, *ftype, 8, 0, tn);
                w.i32(*cver);
                w.tstring(cname);
                w.tstring(cclass);
                w.end_obj(at);
            });
        }
        El::Str(name) => {
            ow.write_any(w, "TStreamerString", |_, w| {
                let at = w.begin_obj(2);
                element_common(w, name, "", 65, 24, 0, "TString");
                w.end_obj(at);
            });
        }
        El::Obj(cls, name, ftype, size, tn) => {
            ow.write_any(w, cls, |_, w| {
                let at = w.begin_obj(2);
                element_common(w, name, "", *ftype, *size, 0, tn);
                w.end_obj(at);
            });
        }
    }
}

/// Serializes the `TList` of `TStreamerInfo` for a tree using `leaf_classes`.
/// `origin` is the key length of the `StreamerInfo` key (reference offsets
/// count from the key start).
pub(super) fn streamer_list(origin: u64, leaf_classes: &[&str]) -> Vec<u8> {
    write_list(origin, &classes(leaf_classes))
}

/// Serializes the `TList` of `TStreamerInfo` for files holding `TH1D`s.
pub(super) fn th1d_streamer_list(origin: u64) -> Vec<u8> {
    write_list(origin, &th1d_classes())
}

fn write_list(origin: u64, infos: &[ClassInfo]) -> Vec<u8> {
    let mut ow = ObjWriter::new(origin);
    let mut w = WBuf::new();
    let at = w.begin_obj(5); // TList v5
    tobject(&mut w, 0x0300_0000);
    w.tstring("");
    w.i32(infos.len() as i32);
    for ci in infos {
        ow.write_any(&mut w, "TStreamerInfo", |ow, w| {
            let at = w.begin_obj(9);
            tnamed(w, ci.name, "", 0x0301_0000);
            w.u32(ci.checksum);
            w.i32(ci.version);
            ow.write_any(w, "TObjArray", |ow, w| {
                let at = w.begin_obj(3);
                tobject(w, 0x0300_0000);
                w.tstring("");
                w.i32(ci.elements.len() as i32);
                w.i32(0);
                for e in &ci.elements {
                    write_element(ow, w, e);
                }
                w.end_obj(at);
            });
            w.end_obj(at);
        });
        w.tstring(""); // TList option string
    }
    w.end_obj(at);
    w.buf
}

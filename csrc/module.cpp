// The Python module commlib._C. Importing it loads this shared library, whose
// static initialisers register the commlib::* operators with the dispatcher;
// the module itself holds one constant, WITH_CUDA (1 when CUDA kernels were
// built). Plain CPython C API, no pybind11: it builds with torch 2.4 and later.
#include <Python.h>

namespace {

PyModuleDef commlib_c_module = {
    PyModuleDef_HEAD_INIT,
    "commlib._C",                                          // m_name
    "Native kernels of commlib, as torch.ops.commlib.*",  // m_doc
    -1,                                                    // m_size: no per-interpreter state
    nullptr,                                               // m_methods: the ops live in torch.ops
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&commlib_c_module);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

"""FPGA export: integer-only reference model, HLS C++ export and the open-source RTL flow."""

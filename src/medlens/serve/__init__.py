"""The triage and second-reader service: studies in from PACS/DICOMweb, findings out as DICOM SR and FHIR."""
